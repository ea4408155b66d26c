package lab

import (
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
)

func newFactory(c kubernetes.Interface) informers.SharedInformerFactory {
	return informers.NewSharedInformerFactory(c, 0)
}
