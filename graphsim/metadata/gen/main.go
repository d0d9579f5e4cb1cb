// Command gen writes graphsim/metadata/v1.0.json: the part of Microsoft
// Graph v1.0's description that m365-worker uses, trimmed from Microsoft's
// own artifacts. Types, properties, nullability and action parameters come
// from the CSDL of github.com/microsoftgraph/msgraph-metadata
// (clean_v10_metadata/cleanMetadata.xml); each property's description, which
// carries the rules the CSDL cannot say (default set, value rules), comes
// from msgraph-sdk-go's generated models, themselves generated from the same
// description.
//
//	git clone https://github.com/microsoftgraph/msgraph-metadata /tmp/msgraph-metadata
//	go run ./graphsim/metadata/gen \
//	  -csdl /tmp/msgraph-metadata/clean_v10_metadata/cleanMetadata.xml \
//	  -commit $(git -C /tmp/msgraph-metadata rev-parse HEAD) \
//	  -sdk $(go list -m -f '{{.Dir}}' github.com/microsoftgraph/msgraph-sdk-go) \
//	  > graphsim/metadata/v1.0.json
package main

import (
	"bufio"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/tevyra/m365-worker/graphsim/metadata"
)

// types are the structured types the project sends or reads, with the SDK
// model file that describes each.
var types = map[string]string{
	"entity": "entity.go", "directoryObject": "directory_object.go", "user": "user.go", "group": "group.go",
	"assignedLicense": "assigned_license.go", "passwordProfile": "password_profile.go", "subscribedSku": "subscribed_sku.go",
	"licenseUnitsDetail": "license_units_detail.go", "servicePlanInfo": "service_plan_info.go",
	"application": "application.go", "passwordCredential": "password_credential.go", "keyCredential": "key_credential.go",
}

// actions are the bound actions the project calls, by binding type.
var actions = map[string]string{"assignLicense": "graph.user", "restore": "graph.directoryObject"}

type xmlProp struct {
	Name     string `xml:"Name,attr"`
	Type     string `xml:"Type,attr"`
	Nullable string `xml:"Nullable,attr"`
}

type xmlType struct {
	Name     string    `xml:"Name,attr"`
	BaseType string    `xml:"BaseType,attr"`
	Abstract string    `xml:"Abstract,attr"`
	Props    []xmlProp `xml:"Property"`
	Navs     []xmlProp `xml:"NavigationProperty"`
}

type xmlAction struct {
	Name   string    `xml:"Name,attr"`
	Params []xmlProp `xml:"Parameter"`
	Return struct {
		Type string `xml:"Type,attr"`
	} `xml:"ReturnType"`
}

func main() {
	csdl := flag.String("csdl", "", "path of clean_v10_metadata/cleanMetadata.xml")
	commit := flag.String("commit", "", "the msgraph-metadata commit it was read at")
	sdk := flag.String("sdk", "", "directory of the msgraph-sdk-go module")
	flag.Parse()
	if *csdl == "" || *commit == "" || *sdk == "" {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Open(*csdl)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	spec, err := read(f)
	if err != nil {
		fail(err)
	}
	spec.Source = metadata.Source{CSDL: "github.com/microsoftgraph/msgraph-metadata clean_v10_metadata/cleanMetadata.xml", Commit: *commit,
		SDK: "github.com/microsoftgraph/msgraph-sdk-go " + filepath.Base(*sdk)[len("msgraph-sdk-go@"):]}
	for name, file := range types {
		descs, err := descriptions(filepath.Join(*sdk, "models", file))
		if err != nil {
			fail(err)
		}
		t := spec.Types[name]
		for pn, p := range t.Properties {
			p.Description = descs[pn]
			t.Properties[pn] = p
		}
	}
	out, _ := json.MarshalIndent(spec, "", " ")
	os.Stdout.Write(append(out, '\n'))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gen:", err)
	os.Exit(1)
}

// read keeps the wanted types and actions of the microsoft.graph schema.
func read(r io.Reader) (*metadata.Spec, error) {
	spec := &metadata.Spec{Types: map[string]metadata.Type{}, Actions: map[string]metadata.Action{}}
	d := xml.NewDecoder(bufio.NewReader(r))
	schema := ""
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case "Schema":
			schema = attr(se, "Namespace")
		case "EntityType", "ComplexType":
			if schema != "microsoft.graph" {
				continue
			}
			if _, want := types[attr(se, "Name")]; !want {
				continue
			}
			var x xmlType
			if err := d.DecodeElement(&x, &se); err != nil {
				return nil, err
			}
			t := metadata.Type{Kind: se.Name.Local, Base: strings.TrimPrefix(x.BaseType, "graph."), Abstract: x.Abstract == "true",
				Properties: map[string]metadata.Property{}, Navigation: map[string]string{}}
			for _, p := range x.Props {
				t.Properties[p.Name] = metadata.Property{Type: p.Type, Nullable: p.Nullable != "false"}
			}
			for _, n := range x.Navs {
				t.Navigation[n.Name] = n.Type
			}
			spec.Types[x.Name] = t
		case "Action":
			if schema != "microsoft.graph" {
				continue
			}
			var x xmlAction
			if err := d.DecodeElement(&x, &se); err != nil {
				return nil, err
			}
			bind, want := actions[x.Name]
			if !want || len(x.Params) == 0 || x.Params[0].Type != bind {
				continue
			}
			a := metadata.Action{Binding: strings.TrimPrefix(bind, "graph."), Returns: x.Return.Type, Parameters: map[string]metadata.Property{}}
			for _, p := range x.Params[1:] {
				a.Parameters[p.Name] = metadata.Property{Type: p.Type, Nullable: p.Nullable != "false"}
			}
			spec.Actions[x.Name] = a
		}
	}
	var missing []string
	for name := range types {
		if _, ok := spec.Types[name]; !ok {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		return nil, fmt.Errorf("types not in the CSDL: %v", missing)
	}
	return spec, nil
}

func attr(se xml.StartElement, name string) string {
	for _, a := range se.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// getterRE matches the SDK's doc comment of a property getter.
var getterRE = regexp.MustCompile(`^// Get\w+ gets the (\S+) property value\. (.*)$`)

// descriptions reads each property's description from an SDK model file.
func descriptions(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := getterRE.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			out[m[1]] = m[2]
		}
	}
	return out, nil
}
