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
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// File is a manifest file as read, with its documents.
type File struct {
	Path string
	Data []byte
	Docs []*Document
}

// Document is one YAML document of a File.
type Document struct {
	// Source is "path, document N".
	Source string
	Object *unstructured.Unstructured
	node   *yaml.Node
}

// ReadFiles reads manifests: files, every .yaml/.yml/.json file under a
// directory, or "-" for in.
func ReadFiles(paths []string, in io.Reader) ([]*File, error) {
	var files []*File
	for _, p := range paths {
		if p == "-" {
			data, err := io.ReadAll(in)
			if err != nil {
				return nil, fmt.Errorf("read standard input: %w", err)
			}
			f, err := parseFile("<stdin>", data)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		var names []string
		if st.IsDir() {
			err := filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
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
			if err != nil {
				return nil, err
			}
			sort.Strings(names)
		} else {
			names = []string{p}
		}
		for _, name := range names {
			data, err := os.ReadFile(name)
			if err != nil {
				return nil, err
			}
			f, err := parseFile(name, data)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
		}
	}
	return files, nil
}

func parseFile(path string, data []byte) (*File, error) {
	f := &File{Path: path, Data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for n := 1; ; n++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, n, err)
		}
		if len(node.Content) == 0 || node.Content[0].Kind != yaml.MappingNode {
			continue
		}
		var m map[string]any
		if err := node.Decode(&m); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, n, err)
		}
		j, err := json.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", path, n, err)
		}
		o := &unstructured.Unstructured{}
		if err := o.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: document %d: not a Kubernetes object: %w", path, n, err)
		}
		f.Docs = append(f.Docs, &Document{Source: fmt.Sprintf("%s, document %d", path, n), Object: o, node: node.Content[0]})
	}
}
