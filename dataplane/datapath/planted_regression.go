//go:build onehop_planted_regression

package datapath

// A planted regression for measuring the latency gate's power: this many hash lookups add
// about 15% to a new connection's latency in the lab (calibrated with `onehop gate`, see the
// README's "Latency gate").
func init() { PlantedConnectLookups = 1000 }
