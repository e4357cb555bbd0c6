package kube

import (
	"context"
	"fmt"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/pager"
)

// PageSize is how many objects a LIST asks for at a time.
var PageSize int64 = 500

// ListAll lists with list in pages of PageSize (client-go's pager): a LIST
// cut by the page limit goes on with its continue token, and one whose
// token expired meanwhile is listed again in full. T is the pointer type of
// the list's items (*corev1.Pod, *unstructured.Unstructured).
func ListAll[T runtime.Object](ctx context.Context, list func(context.Context, metav1.ListOptions) (runtime.Object, error), opts metav1.ListOptions) ([]T, error) {
	return ListEach(ctx, list, opts, func(t T) (T, bool, error) { return t, true, nil })
}

// ListEach lists as ListAll does, and returns what keep makes of each item
// it keeps, page by page: a page is dropped once keep has seen its items,
// so that a large LIST is never held whole when keep keeps less than the
// items. When a continue token expires, what was kept is dropped and the
// LIST is read again in one piece.
func ListEach[T runtime.Object, U any](ctx context.Context, list func(context.Context, metav1.ListOptions) (runtime.Object, error), opts metav1.ListOptions, keep func(T) (U, bool, error)) ([]U, error) {
	var out []U
	each := func(o runtime.Object) error {
		t, ok := o.(T)
		if !ok {
			return fmt.Errorf("list item of type %T", o)
		}
		u, kept, err := keep(t)
		if kept {
			out = append(out, u)
		}
		return err
	}
	// Whether a page went on with a continue token: only then can a token
	// have expired (the pager reads pages on a goroutine of its own).
	var continued atomic.Bool
	p := pager.New(pager.SimplePageFunc(func(o metav1.ListOptions) (runtime.Object, error) {
		if o.Continue != "" {
			continued.Store(true)
			// A continued LIST takes its version from the token.
			o.ResourceVersion, o.ResourceVersionMatch = "", ""
		}
		return list(ctx, o)
	}))
	p.PageSize = PageSize
	// The next page is read while this one is kept, no further ahead.
	p.PageBufferSize = 1
	err := p.EachListItem(ctx, opts, each)
	switch {
	case err == nil:
		return out, nil
	case !apierrors.IsResourceExpired(err) || !continued.Load():
		return nil, err
	}
	out = nil
	full := opts
	full.Limit, full.Continue = 0, ""
	obj, err := list(ctx, full)
	if err != nil {
		return nil, err
	}
	if err := meta.EachListItem(obj, each); err != nil {
		return nil, err
	}
	return out, nil
}
