package agent

import (
	"context"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The agent watches Nodes with a bare reflector instead of a shared
// informer, for one reason: the retry back-off after the apiserver goes
// away. client-go's default grows to 30 s with full jitter, so after a
// 30 s outage a node could stay blind to joins and leaves for up to a
// minute after the server is back. Routing must resume promptly, so the
// agent retries with a 5 s cap. The store kicks a sync on every change; a
// sync always reads the whole store (level-triggered).

// nodeStore is a cache.Store that calls onChange after every mutation.
type nodeStore struct {
	cache.Store
	onChange func()
	synced   atomic.Bool
}

func (s *nodeStore) Add(obj any) error {
	err := s.Store.Add(obj)
	s.onChange()
	return err
}

func (s *nodeStore) Update(obj any) error {
	err := s.Store.Update(obj)
	s.onChange()
	return err
}

func (s *nodeStore) Delete(obj any) error {
	err := s.Store.Delete(obj)
	s.onChange()
	return err
}

func (s *nodeStore) Replace(list []any, rv string) error {
	err := s.Store.Replace(list, rv)
	s.synced.Store(true)
	s.onChange()
	return err
}

func (s *nodeStore) nodes() ([]*corev1.Node, error) {
	objs := s.Store.List()
	out := make([]*corev1.Node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// watchNodes starts a reflector that keeps store up to date until ctx ends.
func watchNodes(ctx context.Context, client kubernetes.Interface, store *nodeStore) {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Nodes().Watch(ctx, o)
		},
	}
	// The wrapper tells the reflector whether the client can stream
	// lists (the in-memory client of the embedded lab cannot).
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.Node{}, store, cache.ReflectorOptions{
		Name:    "podnet-agent-nodes",
		Backoff: &wait.Backoff{Duration: 200 * time.Millisecond, Cap: 5 * time.Second, Factor: 2, Jitter: 0.2, Steps: 1 << 30},
	})
	go r.RunWithContext(ctx)
}
