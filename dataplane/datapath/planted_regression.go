//go:build onehop_planted_regression

package datapath

// A planted regression for measuring the latency gate's power: this many hash lookups add
// about 15% to a same-node new connection's latency in the lab. Measured with `onehop gate`:
// 1000 lookups added a median of 8% (5 runs), 1500 added 7-13% (4 runs), so 2200.
func init() { PlantedConnectLookups = 2200 }
