package graphsim

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"
)

type batchItem struct {
	ID        string            `json:"id"`
	Method    string            `json:"method"`
	URL       string            `json:"url"`
	Headers   map[string]string `json:"headers"`
	Body      json.RawMessage   `json:"body"`
	DependsOn []string          `json:"dependsOn"`
}

// serveBatch runs a JSON batch: each item through the same pipeline
// (permissions, throttling per item), dependents of a failed item get 424.
func (s *Server) serveBatch(claims *tokenClaims, body []byte, reqID, clientReqID string) (*response, *apiError, time.Duration) {
	var req struct {
		Requests []batchItem `json:"requests"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, newErr(400, "BadRequest", "Invalid batch payload format."), 0
	}
	if len(req.Requests) == 0 {
		return nil, newErr(400, "BadRequest", "Invalid batch payload format: no requests."), 0
	}
	if len(req.Requests) > 20 {
		return nil, newErr(400, "BadRequest", "Number of batch request steps exceeds the maximum of 20."), 0
	}
	seen := map[string]bool{}
	for _, it := range req.Requests {
		if it.ID == "" || seen[it.ID] {
			return nil, newErr(400, "BadRequest", "Batch request ids must be unique and non-empty."), 0
		}
		for _, d := range it.DependsOn {
			if !seen[d] {
				return nil, newErr(400, "BadRequest", "Batch request dependsOn references an id that does not come earlier: '"+d+"'."), 0
			}
		}
		seen[it.ID] = true
	}
	status := map[string]int{}
	responses := make([]map[string]any, 0, len(req.Requests))
	var slowest time.Duration
	for _, it := range req.Requests {
		failedDep := false
		for _, d := range it.DependsOn {
			if status[d] >= 400 {
				failedDep = true
			}
		}
		if failedDep {
			status[it.ID] = 424
			responses = append(responses, map[string]any{"id": it.ID, "status": 424, "headers": map[string]string{"Content-Type": "application/json"},
				"body": newErr(424, "FailedDependency", "Failed dependency.").body(reqID, clientReqID)})
			continue
		}
		u, err := url.Parse(it.URL)
		if err != nil {
			status[it.ID] = 400
			responses = append(responses, map[string]any{"id": it.ID, "status": 400, "body": newErr(400, "BadRequest", "Invalid request URL.").body(reqID, clientReqID)})
			continue
		}
		path := "/" + strings.TrimPrefix(strings.TrimPrefix(u.Path, "/v1.0"), "/")
		hdr := http.Header{}
		for k, v := range it.Headers {
			hdr.Set(k, v)
		}
		resp, e, lat := s.exec(claims, strings.ToUpper(it.Method), path, u.Query(), hdr, it.Body)
		slowest = max(slowest, lat)
		item := map[string]any{"id": it.ID}
		h := map[string]string{}
		if e != nil {
			item["status"] = e.status
			for k := range e.header {
				h[k] = e.header.Get(k)
			}
			h["Content-Type"] = "application/json"
			item["body"] = e.body(reqID, clientReqID)
			status[it.ID] = e.status
		} else {
			item["status"] = resp.status
			for k := range resp.header {
				h[k] = resp.header.Get(k)
			}
			if resp.raw != nil {
				item["body"] = string(resp.raw)
			} else if resp.body != nil {
				h["Content-Type"] = "application/json"
				item["body"] = resp.body
			}
			status[it.ID] = resp.status
		}
		item["headers"] = h
		responses = append(responses, item)
	}
	return &response{status: 200, body: map[string]any{"responses": responses}}, nil, slowest + s.opts.Latency.Batch
}
