package testcluster

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func clientOf(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// The API server answers through the delaying proxy, and the fault proxy
// answers each request as it is told.
func TestProxies(t *testing.T) {
	c, ctx := start(t)
	delayed, err := c.DelayProxy(5 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer delayed.Close()
	if _, err := clientOf(t, delayed.Kubeconfig).CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("through the delaying proxy: %v", err)
	}

	var mu sync.Mutex
	next := Pass
	faulty, err := c.FaultProxy(func(r *http.Request) Fault {
		mu.Lock()
		defer mu.Unlock()
		if !strings.HasSuffix(r.URL.Path, "/namespaces/default") {
			return Pass
		}
		return next
	})
	if err != nil {
		t.Fatal(err)
	}
	defer faulty.Close()
	kc := clientOf(t, faulty.Kubeconfig)
	for fault, want := range map[Fault]func(error) bool{
		Pass:            func(err error) bool { return err == nil },
		TooManyRequests: apierrors.IsTooManyRequests,
		Unavailable:     apierrors.IsServiceUnavailable,
		Reset:           func(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") },
	} {
		mu.Lock()
		next = fault
		mu.Unlock()
		// Sent once: client-go would retry a 429 or a reset GET.
		_, err := kc.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces/default").MaxRetries(0).DoRaw(ctx)
		if !want(err) {
			t.Errorf("fault %d: %v", fault, err)
		}
	}
}
