package cli

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// The cluster-facing commands (flows, doctor, trace, connectivity, ui)
// reach the apiserver with one kubeconfig and the agents through the
// apiserver's pod proxy.

// agentSelector selects the podnet DaemonSet's pods (deploy/).
const agentSelector = "app.kubernetes.io/name=podnet"

// kubeConfig loads a kubeconfig (or $KUBECONFIG and the default path).
func kubeConfig(kubeconfig string) (*rest.Config, error) {
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (or use --lab NAME)", err)
	}
	return rc, nil
}

// kubeClient builds a client from a kubeconfig.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := kubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

// agentPods lists the podnet agents of a cluster.
func agentPods(ctx context.Context, client kubernetes.Interface, namespace string) ([]corev1.Pod, error) {
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
	if err != nil {
		return nil, fmt.Errorf("list podnet agents: %w", err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("no podnet agent pods in %s (label %s)", namespace, agentSelector)
	}
	return pods.Items, nil
}
