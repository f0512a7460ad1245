package datapath

// PlantedConnectLookups is how many extra map lookups every balanced connect() makes. It is 0:
// only a build with the tag onehop_planted_regression (planted_regression.go) sets it, to give
// `onehop gate` a real, known slowdown of the connect path to catch.
var PlantedConnectLookups uint32
