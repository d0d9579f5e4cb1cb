// Package metadata is the part of Microsoft Graph v1.0's own description
// that m365-worker uses: types, properties with their types, nullability and
// descriptions, and the bound actions it calls. v1.0.json is generated from
// Microsoft's artifacts (the msgraph-metadata CSDL and msgraph-sdk-go's
// models) by ./gen, which names the command; Source records what it was read
// from. The simulator's conformance checks (graphsim) are driven by it.
package metadata

import (
	_ "embed"
	"encoding/json"
	"strings"
)

// Spec is the trimmed description.
type Spec struct {
	Source  Source            `json:"source"`
	Types   map[string]Type   `json:"types"`
	Actions map[string]Action `json:"actions"`
}

// Source names the artifacts and versions the spec was generated from.
type Source struct {
	CSDL   string `json:"csdl"`
	Commit string `json:"commit"`
	SDK    string `json:"sdk"`
}

// Type is an entity or complex type.
type Type struct {
	Kind       string              `json:"kind"` // EntityType or ComplexType
	Base       string              `json:"base,omitempty"`
	Abstract   bool                `json:"abstract,omitempty"`
	Properties map[string]Property `json:"properties"`
	Navigation map[string]string   `json:"navigation,omitempty"`
}

// Property is a structural property or an action parameter.
type Property struct {
	Type        string `json:"type"` // Edm.String, Collection(graph.assignedLicense), …
	Nullable    bool   `json:"nullable"`
	Description string `json:"description,omitempty"`
}

// Action is a bound action.
type Action struct {
	Binding    string              `json:"binding"`
	Returns    string              `json:"returns,omitempty"`
	Parameters map[string]Property `json:"parameters"`
}

//go:embed v1.0.json
var raw []byte

// V1 is Graph v1.0's description as generated.
var V1 = func() *Spec {
	var s Spec
	if err := json.Unmarshal(raw, &s); err != nil {
		panic("graphsim/metadata: v1.0.json: " + err.Error())
	}
	return &s
}()

// Property finds a property of a type or of its base types.
func (s *Spec) Property(typeName, prop string) (Property, bool) {
	for typeName != "" {
		t, ok := s.Types[typeName]
		if !ok {
			return Property{}, false
		}
		if p, ok := t.Properties[prop]; ok {
			return p, true
		}
		typeName = t.Base
	}
	return Property{}, false
}

// Navigation finds a navigation property of a type or of its base types.
func (s *Spec) Navigation(typeName, prop string) (string, bool) {
	for typeName != "" {
		t, ok := s.Types[typeName]
		if !ok {
			return "", false
		}
		if n, ok := t.Navigation[prop]; ok {
			return n, true
		}
		typeName = t.Base
	}
	return "", false
}

// OnlyOnSelect reports whether the description says the property is
// "Returned only on $select" (outside the type's default set).
func (p Property) OnlyOnSelect() bool {
	return strings.Contains(p.Description, "Returned only on $select")
}

// AcceptsNull is !NotNullable: whether a request may send null.
func (p Property) AcceptsNull() bool { return !p.NotNullable() }

// NotNullable reports whether the CSDL or the description says the property
// cannot be null.
func (p Property) NotNullable() bool {
	return !p.Nullable || strings.Contains(p.Description, "Not nullable")
}
