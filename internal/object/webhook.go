package object

import "k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

// WebhookService is the Service a webhook of a webhook configuration calls.
type WebhookService struct {
	// Webhook is the webhook's name.
	Webhook         string
	Namespace, Name string
	Path            string
	// Port is 443 when the webhook does not name one, as the API server
	// defaults it.
	Port int64
}

// WebhookServices returns the Services that the webhooks of o, a mutating
// or validating webhook configuration, call; nothing for other objects and
// for webhooks called by URL.
func WebhookServices(o *unstructured.Unstructured) []WebhookService {
	if k := o.GetKind(); k != "MutatingWebhookConfiguration" && k != "ValidatingWebhookConfiguration" {
		return nil
	}
	var out []WebhookService
	hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
	for _, h := range hooks {
		m, _ := h.(map[string]any)
		svc, ok, _ := unstructured.NestedMap(m, "clientConfig", "service")
		if !ok {
			continue
		}
		name, _, _ := unstructured.NestedString(m, "name")
		ws := WebhookService{Webhook: name, Port: 443}
		ws.Namespace, _, _ = unstructured.NestedString(svc, "namespace")
		ws.Name, _, _ = unstructured.NestedString(svc, "name")
		ws.Path, _, _ = unstructured.NestedString(svc, "path")
		switch port := svc["port"].(type) {
		case int64:
			ws.Port = port
		case float64: // as encoding/json decodes it
			ws.Port = int64(port)
		}
		out = append(out, ws)
	}
	return out
}
