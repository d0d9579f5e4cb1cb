package graphclient

import "fmt"

// Cloud is a Microsoft cloud's endpoints. The token scope is the Graph root
// plus "/.default".
type Cloud struct {
	Name      string
	Authority string
	GraphRoot string
}

// Clouds by the names an instance configuration uses.
var Clouds = map[string]Cloud{
	"global":    {Name: "global", Authority: "https://login.microsoftonline.com", GraphRoot: "https://graph.microsoft.com"},
	"usgov":     {Name: "usgov", Authority: "https://login.microsoftonline.us", GraphRoot: "https://graph.microsoft.us"},
	"usgov-dod": {Name: "usgov-dod", Authority: "https://login.microsoftonline.us", GraphRoot: "https://dod-graph.microsoft.us"},
	"china":     {Name: "china", Authority: "https://login.chinacloudapi.cn", GraphRoot: "https://microsoftgraph.chinacloudapi.cn"},
}

// LookupCloud returns a cloud by name ("" is global).
func LookupCloud(name string) (Cloud, error) {
	if name == "" {
		name = "global"
	}
	c, ok := Clouds[name]
	if !ok {
		return Cloud{}, fmt.Errorf("unknown cloud %q: use global, usgov, usgov-dod or china", name)
	}
	return c, nil
}
