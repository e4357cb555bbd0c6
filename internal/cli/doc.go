// Package cli is the kfistio command line: one file per command, each turning
// flags into options for one library call. Nothing below this package prints.
package cli
