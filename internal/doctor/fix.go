package doctor

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// edit sets a scalar at a path of a document, creating the mappings on the
// way: keys of mappings, or "#i" for item i of a sequence.
type edit struct {
	path  []string
	value string
	// quoted writes the value as a double-quoted string; else it is written
	// plain (a number).
	quoted bool
}

func (e *edit) text() string {
	if e.quoted {
		return strconv.Quote(e.value)
	}
	return e.value
}

// change is an edit resolved to text: insert lines before line (1-based), or
// replace a value on a line.
type change struct {
	line     int
	insert   []string
	replace  bool
	col, end int // the value's columns on line, for replace
}

// Fix applies the fixes of findings (those that can be applied) to the
// documents of files, and returns each file's new content. Only the lines the
// fixes add or the values they change differ; the rest stays byte for byte.
func Fix(files []*File, findings []Finding) (map[*File][]byte, error) {
	out := map[*File][]byte{}
	for _, f := range files {
		var changes []change
		for _, d := range f.Docs {
			for _, fd := range findings {
				if fd.edit == nil || fd.Source != d.Source {
					continue
				}
				c, err := resolve(d.node, fd.edit, f.Data)
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %w", d.Source, fd.Object, err)
				}
				if c != nil {
					changes = append(changes, *c)
				}
			}
		}
		out[f] = apply(f.Data, changes)
	}
	return out, nil
}

func apply(data []byte, changes []change) []byte {
	lines := strings.SplitAfter(string(data), "\n")
	// From the bottom, so line numbers above stay right.
	sort.SliceStable(changes, func(i, j int) bool { return changes[i].line > changes[j].line })
	for _, c := range changes {
		i := c.line - 1
		if c.replace {
			l := lines[i]
			lines[i] = l[:c.col] + c.insert[0] + l[c.end:]
			continue
		}
		add := make([]string, len(c.insert))
		for k, s := range c.insert {
			add[k] = s + "\n"
		}
		if i >= len(lines) {
			if n := len(lines); n > 0 && !strings.HasSuffix(lines[n-1], "\n") {
				lines[n-1] += "\n"
			}
			lines = append(lines, add...)
			continue
		}
		lines = append(lines[:i], append(add, lines[i:]...)...)
	}
	return []byte(strings.Join(lines, ""))
}

// resolve finds where e goes in the document rooted at node.
func resolve(node *yaml.Node, e *edit, data []byte) (*change, error) {
	cur := node
	for i, seg := range e.path {
		if strings.HasPrefix(seg, "#") {
			n, _ := strconv.Atoi(seg[1:])
			if cur.Kind != yaml.SequenceNode || n >= len(cur.Content) {
				return nil, fmt.Errorf("no item %d at %s", n, strings.Join(e.path[:i], "."))
			}
			cur = cur.Content[n]
			continue
		}
		if cur.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s is not a mapping", strings.Join(e.path[:i], "."))
		}
		next := valueOf(cur, seg)
		if next == nil {
			return insertion(cur, e.path[i:], e.text())
		}
		if i == len(e.path)-1 {
			return replacement(next, e, data)
		}
		cur = next
	}
	return nil, nil
}

func valueOf(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// insertion adds keys (each nested in the one before) and the value (as YAML
// text) to the block mapping m, as lines of their own.
func insertion(m *yaml.Node, keys []string, value string) (*change, error) {
	if m.Style&yaml.FlowStyle != 0 || len(m.Content) == 0 {
		return nil, fmt.Errorf("cannot add %s to a flow-style or empty mapping; apply the fix by hand", strings.Join(keys, "."))
	}
	indent := m.Content[0].Column - 1
	var lines []string
	for i, k := range keys {
		pad := strings.Repeat(" ", indent+2*i)
		if i == len(keys)-1 {
			lines = append(lines, pad+k+": "+value)
		} else {
			lines = append(lines, pad+k+":")
		}
	}
	// Before the second key when there is one; else after the only entry,
	// when it fits on one line.
	if len(m.Content) >= 4 {
		return &change{line: m.Content[2].Line, insert: lines}, nil
	}
	v := m.Content[1]
	if v.Kind != yaml.ScalarNode || v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 || v.Line != m.Content[0].Line {
		return nil, fmt.Errorf("cannot place %s next to a multi-line value; apply the fix by hand", strings.Join(keys, "."))
	}
	return &change{line: v.Line + 1, insert: lines}, nil
}

// tokenEnd finds where a scalar's text ends on its line.
var plainEnd = regexp.MustCompile(`\s+#|\s*$`)

// replacement replaces the scalar n with the value of e in place.
func replacement(n *yaml.Node, e *edit, data []byte) (*change, error) {
	if n.Kind != yaml.ScalarNode {
		return nil, fmt.Errorf("expected a value at line %d", n.Line)
	}
	if n.Value == e.value {
		return nil, nil
	}
	lines := strings.Split(string(data), "\n")
	if n.Line > len(lines) {
		return nil, fmt.Errorf("line %d is past the end", n.Line)
	}
	l := lines[n.Line-1]
	start := n.Column - 1
	end := len(l)
	switch n.Style {
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		q := l[start]
		k := strings.IndexByte(l[start+1:], q)
		if k < 0 {
			return nil, fmt.Errorf("cannot find the end of the value at line %d", n.Line)
		}
		end = start + 1 + k + 1
	case 0:
		if loc := plainEnd.FindStringIndex(l[start:]); loc != nil {
			end = start + loc[0]
		}
	default:
		return nil, fmt.Errorf("cannot replace a block scalar at line %d; apply the fix by hand", n.Line)
	}
	return &change{line: n.Line, replace: true, col: start, end: end, insert: []string{e.text()}}, nil
}
