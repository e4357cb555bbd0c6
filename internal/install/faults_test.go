package install

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// configMaps is a namespace and n ConfigMaps in it; data is the data of
// each, by name.
func configMaps(ns string, names []string, data func(name string) map[string]any) []*unstructured.Unstructured {
	objs := []*unstructured.Unstructured{{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns},
	}}}
	for _, n := range names {
		objs = append(objs, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": n, "namespace": ns},
			"data":     data(n),
		}})
	}
	return objs
}

// smallOptions installs objs as if they were the default installation.
func smallOptions(objs []*unstructured.Unstructured) Options {
	return Options{Installation: build.DefaultInstallation(build.DefaultOverlay), Objects: objs, Timeout: time.Minute, Version: "test"}
}

// deleteNamespace deletes ns and waits until it is gone, so that the next
// test can create it again.
func deleteNamespace(t *testing.T, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, _ := admin(t)
	err := in.Client.Kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	for ; err == nil; _, err = in.Client.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}) {
		select {
		case <-ctx.Done():
			t.Fatalf("Namespace/%s is still there", ns)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if !apierrors.IsNotFound(err) {
		t.Error(err)
	}
}

// Four transient failures in a row of one request are survived; the fifth
// ends the install with the object and the last answer; a re-run converges.
func TestTransientErrors(t *testing.T) {
	ctx := context.Background()
	const ns = "kfistio-faults"
	t.Cleanup(func() { purge(t); deleteNamespace(t, ns) })
	target := "/api/v1/namespaces/" + ns + "/configmaps/b"
	var (
		mu       sync.Mutex
		schedule []testcluster.Fault
		attempts int
	)
	faults := func(s ...testcluster.Fault) {
		mu.Lock()
		defer mu.Unlock()
		schedule, attempts = s, 0
	}
	proxy, err := cluster.FaultProxy(func(r *http.Request) testcluster.Fault {
		if r.Method != http.MethodPatch || r.URL.Path != target || r.URL.Query().Get("dryRun") != "" {
			return testcluster.Pass
		}
		mu.Lock()
		defer mu.Unlock()
		attempts++
		if len(schedule) == 0 {
			return testcluster.Pass
		}
		f := schedule[0]
		schedule = schedule[1:]
		return f
	})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	version := "1"
	o := smallOptions(configMaps(ns, []string{"a", "b", "c"}, func(string) map[string]any { return map[string]any{"v": version} }))

	faults(testcluster.TooManyRequests, testcluster.Unavailable, testcluster.Reset, testcluster.Unavailable)
	in, _ := installer(t, proxy.Kubeconfig)
	cs, err := in.Install(ctx, o)
	if err != nil {
		t.Fatalf("install through four transient failures: %v", err)
	}
	if attempts != kube.Attempts || cs.Count(Created) != 4 {
		t.Errorf("%d attempts, changes %v; want %d attempts, 4 created", attempts, onlyChanges(cs), kube.Attempts)
	}

	version = "2"
	o = smallOptions(configMaps(ns, []string{"a", "b", "c"}, func(string) map[string]any { return map[string]any{"v": version} }))
	faults(testcluster.Unavailable, testcluster.Reset, testcluster.TooManyRequests, testcluster.Unavailable, testcluster.TooManyRequests)
	_, err = in.Install(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "ConfigMap/"+ns+"/b") || !strings.Contains(err.Error(), "gave up after 5 attempts") ||
		!strings.Contains(err.Error(), "429 Too Many Requests") {
		t.Fatalf("install through five transient failures: %v; want it to name ConfigMap/%s/b, the 5 attempts and the last answer, 429", err, ns)
	}
	if attempts != kube.Attempts {
		t.Errorf("%d attempts, want %d", attempts, kube.Attempts)
	}

	faults()
	cs, err = in.Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if c := onlyChanges(cs); !slices.Contains(c, "ConfigMap/"+ns+"/b configured") {
		t.Errorf("re-run changes %v, want ConfigMap/%s/b configured", c, ns)
	}
	again, counter := installer(t, proxy.Kubeconfig)
	if cs, err := again.Install(ctx, o); err != nil || len(onlyChanges(cs)) > 0 || counter.Writes() > 0 {
		t.Errorf("after converging: %v, changes %v, %d writes", err, onlyChanges(cs), counter.Writes())
	}
}

// Applied concurrently, a stage yields the same change set and the same
// errors, in the same order, every time (the first run creates, the others
// find the objects there).
func TestDeterministicUnderConcurrency(t *testing.T) {
	ctx := context.Background()
	const ns = "kfistio-order"
	t.Cleanup(func() { purge(t); deleteNamespace(t, ns) })
	var names []string
	for i := range 24 {
		names = append(names, fmt.Sprintf("cm-%02d", i))
	}
	// Two of them the API server refuses: a key that is not a valid one.
	bad := func(n string) bool { return n == "cm-05" || n == "cm-17" }
	o := smallOptions(configMaps(ns, names, func(n string) map[string]any {
		if bad(n) {
			return map[string]any{"not a key!": "x"}
		}
		return map[string]any{"k": n}
	}))
	var second string
	for run := range 4 {
		in, _ := admin(t)
		cs, err := in.Install(ctx, o)
		if err == nil {
			t.Fatal("install of refused objects succeeded")
		}
		got := fmt.Sprintf("%v\n%v", cs, err)
		switch run {
		case 0:
			msg := err.Error()
			i, j := strings.Index(msg, "ConfigMap/"+ns+"/cm-05"), strings.Index(msg, "ConfigMap/"+ns+"/cm-17")
			if i < 0 || j < i {
				t.Errorf("error does not name both refused objects in order: %v", err)
			}
			var objs []string
			for _, c := range cs {
				objs = append(objs, c.Object)
			}
			if !slices.IsSorted(objs[1:]) || len(objs) != 1+len(names)-2 {
				t.Errorf("change set %v, want the namespace, then the %d accepted ConfigMaps in order", objs, len(names)-2)
			}
		case 1:
			second = got
		default:
			if got != second {
				t.Errorf("run %d differs:\n%s\nrun 1:\n%s", run, got, second)
			}
		}
	}
}
