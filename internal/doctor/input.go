package doctor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// File is a manifest file as read, with its Kubernetes objects.
type File struct {
	Path string
	Data []byte
	Docs []*Document
	// Notes say what in the file was not read as a Kubernetes object, and why.
	Notes []string
}

// Document is one Kubernetes object of a File: a YAML document, or an item
// of a List document.
type Document struct {
	// Source is "path, document N" (", item I" for an item of a List).
	Source string
	Object *unstructured.Unstructured
	// node is the object's mapping node; index is the position of its YAML
	// document in the file and path where the object is in that document
	// (nil, or "items", "#i" for a List item), for fixes.
	node  *yaml.Node
	index int
	path  []string
}

// maxListDepth bounds Lists of Lists.
const maxListDepth = 4

// ReadFiles reads manifests: files, every .yaml/.yml/.json file under a
// directory, or "-" for in. Documents that are not Kubernetes objects (no
// apiVersion and kind) are left out with a note on their File, as are files
// that hold none. A path that cannot be read or a file that is not valid
// YAML is an error; every such error is returned, joined, next to the files
// that could be read.
func ReadFiles(paths []string, in io.Reader) ([]*File, error) {
	var files []*File
	var errs []error
	read := func(name string, data []byte) {
		f, err := parseFile(name, data)
		if err != nil {
			errs = append(errs, err)
			return
		}
		files = append(files, f)
	}
	for _, p := range paths {
		if p == "-" {
			data, err := io.ReadAll(in)
			if err != nil {
				errs = append(errs, fmt.Errorf("read standard input: %w", err))
				continue
			}
			read("<stdin>", data)
			continue
		}
		names, err := manifestFiles(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, name := range names {
			data, err := os.ReadFile(name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			read(name, data)
		}
	}
	return files, errors.Join(errs...)
}

// manifestFiles is p itself, or the manifest files under directory p, sorted.
func manifestFiles(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var names []string
	err = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch strings.ToLower(filepath.Ext(q)) {
		case ".yaml", ".yml", ".json":
			if !d.IsDir() {
				names = append(names, q)
			}
		}
		return nil
	})
	sort.Strings(names)
	return names, err
}

// parseFile reads the Kubernetes objects of a manifest file.
func parseFile(path string, data []byte) (*File, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%s: not UTF-8 text", path)
	}
	f := &File{Path: path, Data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	other := 0
	for n := 1; ; n++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %s", path, n, shorten(err.Error()))
		}
		if len(node.Content) == 0 || isNull(node.Content[0]) {
			continue // an empty document, or comments only
		}
		source := fmt.Sprintf("%s, document %d", path, n)
		if !f.readObject(node.Content[0], source, n-1, nil, 0) {
			other++
		}
	}
	if len(f.Docs) == 0 && other > 0 {
		f.Notes = []string{path + ": not a Kubernetes manifest (no document has apiVersion and kind)"}
	}
	return f, nil
}

// readObject adds the object at node, or the items of a List, to f, and
// reports whether node was a Kubernetes object.
func (f *File) readObject(node *yaml.Node, source string, index int, path []string, depth int) bool {
	o, why := decodeObject(node)
	if o == nil {
		f.Notes = append(f.Notes, source+": "+why)
		return false
	}
	items := valueOf(node, "items")
	if strings.HasSuffix(o.GetKind(), "List") && items != nil && items.Kind == yaml.SequenceNode && depth < maxListDepth {
		for i, item := range items.Content {
			p := append(append([]string{}, path...), "items", "#"+strconv.Itoa(i))
			f.readObject(resolveAlias(item), fmt.Sprintf("%s, item %d", source, i+1), index, p, depth+1)
		}
		return true
	}
	f.Docs = append(f.Docs, &Document{Source: source, Object: o, node: node, index: index, path: path})
	return true
}

// decodeObject reads node as a Kubernetes object, or says why it is not one.
func decodeObject(node *yaml.Node) (*unstructured.Unstructured, string) {
	if node.Kind != yaml.MappingNode {
		return nil, "not a Kubernetes object (not a mapping), skipped"
	}
	var m map[string]any
	if err := node.Decode(&m); err != nil {
		return nil, "not a Kubernetes object (" + shorten(err.Error()) + "), skipped"
	}
	apiVersion, _ := m["apiVersion"].(string)
	kind, _ := m["kind"].(string)
	if apiVersion == "" || kind == "" {
		return nil, "not a Kubernetes object (no apiVersion and kind), skipped"
	}
	j, err := json.Marshal(m)
	if err != nil {
		return nil, "not a Kubernetes object (" + shorten(err.Error()) + "), skipped"
	}
	o := &unstructured.Unstructured{}
	if err := o.UnmarshalJSON(j); err != nil {
		return nil, "not a Kubernetes object (" + shorten(err.Error()) + "), skipped"
	}
	return o, ""
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 8; i++ {
		n = n.Alias
	}
	return n
}

// maxMessage bounds the messages of the YAML and JSON libraries, which can
// quote a whole document.
const maxMessage = 160

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= maxMessage {
		return s
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
