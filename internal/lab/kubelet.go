package lab

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/agent"
	"github.com/podnet/podnet/internal/netns"
)

// sandbox is a running lab pod: its namespace, its CNI attachment and its
// workload.
type sandbox struct {
	key         string
	uid         string
	node        *labNode
	nsName      string
	nsPath      string
	containerID string
	ips         []netip.Addr
	work        *workload
}

func (l *Lab) runtimeConf(sb *sandbox, pod *corev1.Pod) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: sb.containerID, NetNS: sb.nsPath, IfName: "eth0"}
	if pod != nil {
		rt.Args = [][2]string{
			{"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", sb.containerID}, {"K8S_POD_UID", string(pod.UID)},
		}
	}
	return rt
}

func (n *labNode) conflist() (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromFile(filepath.Join(n.confDir, agent.ConflistName))
}

// syncPod is the lab's kubelet for one pod: it makes the pod's sandbox
// exist when the pod is bound to one of the lab's nodes, and tears it down
// when the pod is gone.
func (l *Lab) syncPod(ctx context.Context, key string) error {
	obj, exists, err := l.factory.Core().V1().Pods().Informer().GetIndexer().GetByKey(key)
	if err != nil {
		return err
	}
	var pod *corev1.Pod
	if exists {
		pod = obj.(*corev1.Pod)
	}
	l.mu.Lock()
	sb := l.sandboxes[key]
	l.mu.Unlock()
	if pod == nil || pod.DeletionTimestamp != nil || l.node(pod.Spec.NodeName) == nil || (sb != nil && sb.uid != string(pod.UID)) {
		if sb != nil {
			return l.teardown(ctx, sb)
		}
		return nil
	}
	if sb != nil {
		return nil
	}
	sb, err = l.startSandbox(ctx, key, pod)
	if err != nil {
		return err
	}
	return l.reportRunning(ctx, pod, sb)
}

func (l *Lab) startSandbox(ctx context.Context, key string, pod *corev1.Pod) (sb *sandbox, err error) {
	node := l.node(pod.Spec.NodeName)
	list, err := node.conflist()
	if err != nil {
		return nil, fmt.Errorf("pod %s: node %s has no CNI config yet: %w", key, node.name, err)
	}
	sum := sha256.Sum256([]byte(string(pod.UID) + key))
	id := hex.EncodeToString(sum[:])
	sb = &sandbox{key: key, uid: string(pod.UID), node: node, nsName: Prefix(l.opt.Name) + "p" + id[:10], containerID: id}
	if sb.nsPath, err = netns.Create(sb.nsName); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			netns.Delete(sb.nsName)
		}
	}()
	var res *current.Result
	err = netns.Do(node.nsPath, func() error {
		r, err := l.cni.AddNetworkList(ctx, list, l.runtimeConf(sb, pod))
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s: CNI ADD: %w", key, err)
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			sb.ips = append(sb.ips, a.Unmap())
		}
	}
	if sb.work, err = startWorkload(sb.nsPath, pod); err != nil {
		netns.Do(node.nsPath, func() error { return l.cni.DelNetworkList(ctx, list, l.runtimeConf(sb, pod)) })
		return nil, err
	}
	if err := node.agent.AllowSocketNetNS(sb.nsPath); err != nil {
		sb.work.Close()
		netns.Do(node.nsPath, func() error { return l.cni.DelNetworkList(ctx, list, l.runtimeConf(sb, pod)) })
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	l.mu.Lock()
	l.sandboxes[key] = sb
	l.mu.Unlock()
	l.log.Info("pod running", "pod", key, "node", node.name, "ips", sb.ips)
	return sb, nil
}

func (l *Lab) reportRunning(ctx context.Context, pod *corev1.Pod, sb *sandbox) error {
	p := pod.DeepCopy()
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.StartTime = &now
	p.Status.PodIPs = nil
	for _, a := range sb.ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	if len(sb.ips) > 0 {
		p.Status.PodIP = sb.ips[0].String()
	}
	for _, a := range nodeAddrs(l.opt.Family, l.opt.Subnets, sb.node.index) {
		p.Status.HostIPs = append(p.Status.HostIPs, corev1.HostIP{IP: a.Addr().String()})
	}
	p.Status.HostIP = p.Status.HostIPs[0].IP
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	_, err := l.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// teardown runs CNI DEL and removes the pod's namespace. DEL runs before
// the namespace goes, as a runtime does; if the conflist is gone the
// namespace is removed anyway (the veth dies with it) and GC reclaims the
// address.
func (l *Lab) teardown(ctx context.Context, sb *sandbox) error {
	if sb.work != nil {
		sb.work.Close()
	}
	var errs []error
	if err := sb.node.agent.ForgetSocketNetNS(sb.nsPath); err != nil {
		errs = append(errs, err)
	}
	if list, err := sb.node.conflist(); err == nil {
		if err := netns.Do(sb.node.nsPath, func() error { return l.cni.DelNetworkList(ctx, list, l.runtimeConf(sb, nil)) }); err != nil {
			errs = append(errs, fmt.Errorf("pod %s: CNI DEL: %w", sb.key, err))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := netns.Delete(sb.nsName); err != nil {
		errs = append(errs, err)
	}
	l.mu.Lock()
	if l.sandboxes[sb.key] == sb {
		delete(l.sandboxes, sb.key)
	}
	l.mu.Unlock()
	l.log.Info("pod removed", "pod", sb.key)
	return errors.Join(errs...)
}

// runQueue feeds keys to fn from a rate-limited work queue until ctx ends.
// Failed keys are retried with back-off.
func runQueue(ctx context.Context, q workQueue, workers int, fn func(context.Context, string) error, log func(string, error)) {
	for i := 0; i < workers; i++ {
		go func() {
			for {
				key, shut := q.Get()
				if shut {
					return
				}
				if err := fn(ctx, key); err != nil {
					log(key, err)
					q.AddRateLimited(key)
				} else {
					q.Forget(key)
				}
				q.Done(key)
			}
		}()
	}
	go func() { <-ctx.Done(); q.ShutDown() }()
}

func keyOf(obj any) string {
	k, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	return k
}

func newUID() types.UID {
	var b [16]byte
	rand.Read(b[:])
	return types.UID(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]))
}
