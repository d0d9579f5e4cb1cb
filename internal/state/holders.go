package state

import "context"

// Holders are the locks held in the instance's part of the bucket now: the
// jobs that hold their target's turn or the instance's sync lock, with
// their workers. The console's "where is job X" reads them for a job in
// flight.
func (sc *Scope) Holders(ctx context.Context) ([]Holder, error) {
	keys, err := sc.s.listKeys(ctx, sc.key(kindLock, ">"))
	if err != nil {
		return nil, err
	}
	var out []Holder
	for _, k := range keys {
		var h Holder
		ok, err := sc.s.getJSON(ctx, k, &h)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, h)
		}
	}
	return out, nil
}
