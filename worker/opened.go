package worker

import (
	"sync"

	"github.com/tevyra/m365-worker/jobs"
)

// openedFields keeps the instance records' secrets a worker opened, by
// sealed value and binding, so that a job does not pay a curve operation to
// open what the jobs before it opened (a fifth of a millisecond each, one
// per job in `bench overhead`). A sealed value is random per sealing, so a
// new secret (an instance update) is opened afresh; a binding that does not
// match is not in the map and fails as it would. Jobs' own sealed values
// (passwords) are never kept. The worker's pool keys are fixed for its life,
// so what opened once opens again.
type openedFields struct {
	mu sync.Mutex
	m  map[openedKey][]byte
}

type openedKey struct {
	box     string
	binding jobs.Binding
}

// openedFieldsMax bounds the map: past it, it starts again empty (the pool's
// instances then open their secrets once more).
const openedFieldsMax = 20_000

func (o *openedFields) open(s *jobs.SealedSecret, b jobs.Binding, open func(*jobs.SealedSecret, jobs.Binding) ([]byte, error)) ([]byte, error) {
	k := openedKey{box: s.Recipient + "/" + s.Sender + "/" + s.Box, binding: b}
	o.mu.Lock()
	v, ok := o.m[k]
	o.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := open(s, b)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	if o.m == nil || len(o.m) >= openedFieldsMax {
		o.m = map[openedKey][]byte{}
	}
	o.m[k] = v
	o.mu.Unlock()
	return v, nil
}
