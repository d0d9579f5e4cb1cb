package notify

import (
	"net/http"
	"strconv"
)

// answer is what a request was answered: the label of
// m365_notify_requests_total, from a fixed set.
type answer int

const (
	answerAccepted     answer = iota + 1 // 202: the trigger stored or deferred
	answerHandshake                      // 200: the validation token echoed
	answerForbidden                      // 403: no notification carries the instance's clientState
	answerBadRequest                     // 400: not a notification, or a bad token
	answerTooLarge                       // 413: the body reaches past MaxBody
	answerNotFound                       // 404: not a notification URL
	answerMethod                         // 405
	answerBusy                           // 503: bodies or instances at their cap
	answerUnavailable                    // 503: the trigger cannot be stored (NATS away, stream missing or full)
	answerShuttingDown                   // 503: shutting down
	answerCount
)

var answerInfo = [answerCount]struct {
	label      string
	status     int
	retryAfter int // seconds; 0: none
}{
	answerAccepted:     {"accepted", http.StatusAccepted, 0},
	answerHandshake:    {"handshake", http.StatusOK, 0},
	answerForbidden:    {"forbidden", http.StatusForbidden, 0},
	answerBadRequest:   {"bad_request", http.StatusBadRequest, 0},
	answerTooLarge:     {"too_large", http.StatusRequestEntityTooLarge, 0},
	answerNotFound:     {"not_found", http.StatusNotFound, 0},
	answerMethod:       {"method_not_allowed", http.StatusMethodNotAllowed, 0},
	answerBusy:         {"busy", http.StatusServiceUnavailable, 2},
	answerUnavailable:  {"unavailable", http.StatusServiceUnavailable, 10},
	answerShuttingDown: {"shutting_down", http.StatusServiceUnavailable, 10},
}

// answer counts and writes an answer other than 202 and the handshake's.
func (r *Receiver) answer(w http.ResponseWriter, a answer, msg string) {
	r.stats.answers[a].Add(1)
	info := answerInfo[a]
	if info.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(info.retryAfter))
	}
	if a == answerTooLarge || a == answerBusy {
		w.Header().Set("Connection", "close") // the rest of the body is not read
	}
	if msg == "" {
		msg = http.StatusText(info.status)
	}
	http.Error(w, msg, info.status)
}
