package tree

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kubeflow/kfistio/internal/object"
)

// Change is one generated file that differs between disk and a fresh render.
type Change struct {
	Path string // relative to the manifests directory
	// Diff is the unified diff from the file on disk to the fresh one
	// (Compare only).
	Diff string
}

// Compare returns how the generated files under dir differ from f: files that
// differ or are missing, and files that carry Header but are no longer
// generated, each with its unified diff. It writes nothing.
func Compare(dir string, f Files) ([]Change, error) { return compare(dir, f, true) }

// compare is Compare; without diffs, it only names the changed files.
func compare(dir string, f Files, diffs bool) ([]Change, error) {
	stale, err := generatedOnDisk(dir)
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, p := range f.Paths() {
		delete(stale, p)
		old, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if bytes.Equal(old, f[p]) {
			continue
		}
		c := Change{Path: p}
		if diffs {
			c.Diff = unified(p, old, f[p])
		}
		changes = append(changes, c)
	}
	for p := range stale {
		old, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			return nil, err
		}
		c := Change{Path: p}
		if diffs {
			c.Diff = unified(p, old, nil)
		}
		changes = append(changes, c)
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].Path < changes[j].Path })
	return changes, nil
}

// Write makes the generated files under dir equal to f: it writes what differs
// and removes generated files that f no longer has. Files that are already
// right are not touched. It returns what it changed.
func Write(dir string, f Files) ([]Change, error) {
	changes, err := compare(dir, f, false)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		target := filepath.Join(dir, filepath.FromSlash(c.Path))
		content, ok := f[c.Path]
		if !ok {
			if err := os.Remove(target); err != nil {
				return nil, err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(target, content, 0o644); err != nil {
			return nil, err
		}
	}
	return changes, nil
}

// generatedOnDisk returns the files under dir whose first line is Header.
func generatedOnDisk(dir string) (map[string]bool, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("manifests directory: %w", err)
	}
	found := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		gen, err := hasHeader(p)
		if err != nil {
			return err
		}
		if gen {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			found[filepath.ToSlash(rel)] = true
		}
		return nil
	})
	return found, err
}

func hasHeader(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer func() { _ = f.Close() }()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return false, nil
	}
	return strings.TrimRight(line, "\r\n") == Header, nil
}

func unified(path string, old, fresh []byte) string {
	return object.Diff("a/manifests/"+path+" (on disk)", "b/manifests/"+path+" (fresh render)", old, fresh)
}
