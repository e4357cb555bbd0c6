// Package schema validates objects the way an API server would: built-in kinds
// against the Kubernetes schema of the client-go version kfistio is built with,
// custom resources against the structural schema of their
// CustomResourceDefinition, with unknown fields reported.
package schema

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kubeflow/kfistio/internal/object"
)

// Validator validates objects of built-in kinds and of the kinds its
// CustomResourceDefinitions define.
type Validator struct {
	builtin managedfields.TypeConverter
	custom  map[schema.GroupVersionKind]*crdSchema
}

type crdSchema struct {
	crd        string
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
}

// New returns a Validator that knows the kinds defined by the
// CustomResourceDefinitions among crds (other objects are ignored).
func New(crds []*unstructured.Unstructured) (*Validator, error) {
	v := &Validator{
		builtin: applyconfigurations.NewTypeConverter(scheme.Scheme),
		custom:  map[schema.GroupVersionKind]*crdSchema{},
	}
	for _, u := range crds {
		if u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if err := v.add(u); err != nil {
			return nil, fmt.Errorf("%s: %w", object.Key(u), err)
		}
	}
	return v, nil
}

func (v *Validator) add(u *unstructured.Unstructured) error {
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, crd); err != nil {
		return err
	}
	for _, ver := range crd.Spec.Versions {
		if !ver.Served || ver.Schema == nil || ver.Schema.OpenAPIV3Schema == nil {
			continue
		}
		internal := &apiextensions.JSONSchemaProps{}
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(ver.Schema.OpenAPIV3Schema, internal, nil); err != nil {
			return fmt.Errorf("version %s: %w", ver.Name, err)
		}
		s, err := structuralschema.NewStructural(internal)
		if err != nil {
			return fmt.Errorf("version %s: schema is not structural: %w", ver.Name, err)
		}
		val, _, err := apiservervalidation.NewSchemaValidator(internal)
		if err != nil {
			return fmt.Errorf("version %s: %w", ver.Name, err)
		}
		gvk := schema.GroupVersionKind{Group: crd.Spec.Group, Version: ver.Name, Kind: crd.Spec.Names.Kind}
		v.custom[gvk] = &crdSchema{crd: crd.Name, structural: s, validator: val}
	}
	return nil
}

// Validate returns every way o does not fit its schema: unknown fields, wrong
// types, violated constraints, or a kind with no schema at all.
func (v *Validator) Validate(o *unstructured.Unstructured) []string {
	gvk := o.GroupVersionKind()
	if c, ok := v.custom[gvk]; ok {
		return c.validate(o)
	}
	if gvk == apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition") {
		return validateCRD(o)
	}
	if scheme.Scheme.Recognizes(gvk) {
		if _, err := v.builtin.ObjectToTyped(o); err != nil {
			return splitErrors(err.Error())
		}
		return nil
	}
	return []string{fmt.Sprintf("no schema for %s: neither a built-in kind nor defined by a CustomResourceDefinition of the tree", gvk)}
}

func (c *crdSchema) validate(o *unstructured.Unstructured) []string {
	var problems []string
	copied := o.DeepCopy().Object
	unknown := pruning.PruneWithOptions(copied, c.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	sort.Strings(unknown)
	for _, p := range unknown {
		problems = append(problems, fmt.Sprintf("%s: field not declared in the schema of %s", p, c.crd))
	}
	for _, e := range apiservervalidation.ValidateCustomResource(field.NewPath(""), o.Object, c.validator) {
		problems = append(problems, strings.TrimPrefix(e.Error(), "<nil>."))
	}
	return problems
}

// splitErrors turns structured-merge-diff's multi-line error into one
// problem per line.
func splitErrors(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "errors:"))
		if line != "" {
			out = append(out, line)
		}
	}
	return out
}

// validateCRD validates a CustomResourceDefinition as the API server does:
// strict decoding (no unknown fields), defaulting, then the validation of
// apiextensions-apiserver, which also requires structural schemas.
func validateCRD(o *unstructured.Unstructured) []string {
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, crd, true); err != nil {
		return []string{err.Error()}
	}
	apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(crd)
	if crd.Spec.Conversion == nil {
		crd.Spec.Conversion = &apiextensionsv1.CustomResourceConversion{Strategy: apiextensionsv1.NoneConverter}
	}
	internal := &apiextensions.CustomResourceDefinition{}
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(crd, internal, nil); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, e := range apiextensionsvalidation.ValidateCustomResourceDefinition(context.Background(), internal) {
		problems = append(problems, e.Error())
	}
	return problems
}
