package kube

import (
	"context"
	"fmt"

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
	p := pager.New(pager.SimplePageFunc(func(o metav1.ListOptions) (runtime.Object, error) { return list(ctx, o) }))
	p.PageSize = PageSize
	obj, _, err := p.List(ctx, opts)
	if err != nil {
		return nil, err
	}
	var out []T
	err = meta.EachListItem(obj, func(o runtime.Object) error {
		t, ok := o.(T)
		if !ok {
			return fmt.Errorf("list item of type %T", o)
		}
		out = append(out, t)
		return nil
	})
	return out, err
}
