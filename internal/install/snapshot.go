package install

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/pager"

	"github.com/kubeflow/kfistio/internal/object"
)

// Snapshot holds the live objects of an installation, read with one LIST
// per kind and namespace rather than a GET per object. It answers for every
// object of a kind and namespace it listed, whether the installation names
// it or not.
type Snapshot struct {
	// selector, if set, is the label selector of every LIST.
	selector string
	mu       sync.Mutex
	listed   map[scope]bool
	objs     map[identity]*unstructured.Unstructured
}

// scope is what one LIST reads: a resource in a namespace ("" for
// cluster-scoped resources).
type scope struct {
	resource  schema.GroupVersionResource
	namespace string
}

type identity struct {
	scope
	name string
}

// concurrency is how many requests to keep in flight.
func (in *Installer) concurrency() int {
	return max(in.Client.Concurrency, 1)
}

// Snapshot lists the live objects of every kind and namespace of objs, one
// LIST each, in.Concurrency at a time. Kinds the cluster does not serve yet
// (their CRD is part of the installation) are left out; a later Read lists
// them.
func (in *Installer) Snapshot(ctx context.Context, objs []*unstructured.Unstructured) (*Snapshot, error) {
	return in.snapshot(ctx, objs, "")
}

func (in *Installer) snapshot(ctx context.Context, objs []*unstructured.Unstructured, selector string) (*Snapshot, error) {
	s := &Snapshot{selector: selector, listed: map[scope]bool{}, objs: map[identity]*unstructured.Unstructured{}}
	return s, s.Read(ctx, in, objs)
}

// Read lists the kinds and namespaces of objs that s has not listed yet.
func (s *Snapshot) Read(ctx context.Context, in *Installer, objs []*unstructured.Unstructured) error {
	var todo []scope
	s.mu.Lock()
	for _, o := range objs {
		sc, err := in.scopeOf(o)
		if err != nil {
			continue // not served: no object of this kind exists
		}
		if !s.listed[sc] && !slices.Contains(todo, sc) {
			todo = append(todo, sc)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(todo, func(a, b scope) int {
		if c := cmp.Compare(a.resource.String(), b.resource.String()); c != 0 {
			return c
		}
		return cmp.Compare(a.namespace, b.namespace)
	})
	return errors.Join(inParallel(ctx, len(todo), in.concurrency(), func(i int) error {
		return s.list(ctx, in, todo[i])
	})...)
}

func (s *Snapshot) list(ctx context.Context, in *Installer, sc scope) error {
	var res interface {
		List(context.Context, metav1.ListOptions) (*unstructured.UnstructuredList, error)
	} = in.Client.Dynamic.Resource(sc.resource)
	if sc.namespace != "" {
		res = in.Client.Dynamic.Resource(sc.resource).Namespace(sc.namespace)
	}
	var items []*unstructured.Unstructured
	p := pager.New(func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return res.List(ctx, opts)
	})
	err := p.EachListItem(ctx, metav1.ListOptions{LabelSelector: s.selector}, func(o runtime.Object) error {
		if u, ok := o.(*unstructured.Unstructured); ok {
			items = append(items, u)
		}
		return nil
	})
	if apierrors.IsNotFound(err) {
		// Discovery still names a resource whose CRD is gone: nothing of
		// it exists, and a later Read lists it again.
		return nil
	}
	if err != nil {
		where := ""
		if sc.namespace != "" {
			where = " in namespace " + sc.namespace
		}
		return fmt.Errorf("list %s%s: %w", sc.resource.GroupResource(), where, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listed[sc] = true
	for _, u := range items {
		s.objs[identity{sc, u.GetName()}] = u
	}
	return nil
}

// Get returns the live object of o, nil when it does not exist; known is
// false when s has not listed o's kind and namespace (its kind was not
// served).
func (s *Snapshot) Get(in *Installer, o *unstructured.Unstructured) (live *unstructured.Unstructured, known bool) {
	sc, err := in.scopeOf(o)
	if err != nil {
		return nil, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objs[identity{sc, o.GetName()}], s.listed[sc]
}

// Listed returns the live objects s listed in the kind and namespace of o,
// sorted by name.
func (s *Snapshot) Listed(in *Installer, o *unstructured.Unstructured) []*unstructured.Unstructured {
	sc, err := in.scopeOf(o)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*unstructured.Unstructured
	for id, u := range s.objs {
		if id.scope == sc {
			out = append(out, u)
		}
	}
	slices.SortFunc(out, func(a, b *unstructured.Unstructured) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return out
}

// scopeOf is the LIST that reads o.
func (in *Installer) scopeOf(o *unstructured.Unstructured) (scope, error) {
	m, err := in.Client.Mapping(o.GroupVersionKind())
	if err != nil {
		return scope{}, fmt.Errorf("%s: %w", object.Key(o), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return scope{m.Resource, o.GetNamespace()}, nil
	}
	return scope{m.Resource, ""}, nil
}

// inParallel runs fn(0..n-1), at most limit at a time, and returns the
// errors in index order. A failure does not stop the other calls, so the
// errors are the same whatever the timing; a cancelled ctx stops starting
// new ones.
func inParallel(ctx context.Context, n, limit int, fn func(i int) error) []error {
	errs := make([]error, n)
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		if ctx.Err() != nil {
			errs[i] = ctx.Err()
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return slices.DeleteFunc(errs, func(e error) bool { return e == nil })
}
