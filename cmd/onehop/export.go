package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/smp"
)

// exportFormats are the schemas `onehop export` can write; each maps results to one document.
var exportFormats = map[string]func([]*bench.Result) (any, error){
	"smp": func(rs []*bench.Result) (any, error) {
		doc := smp.Document{Schema: smp.NewSchema()}
		for _, r := range rs {
			d, err := smp.FromResult(r)
			if err != nil {
				return nil, err
			}
			doc.Merge(d)
		}
		return doc, nil
	},
}

func exportCmd() *cobra.Command {
	var format, out, resultsDir string
	cmd := &cobra.Command{
		Use:   "export --format smp [--out FILE|-] [<result.json>...]",
		Short: "Write results in another schema (smp: Service Mesh Performance, smp-spec.io)",
		Long: "Write the given result files, or the newest result of each scenario in --results, as one\n" +
			"document in another schema. smp: one SMP PerformanceTestResult per measured run, with onehop's\n" +
			"own fields (validity, errors, sockets, CPU, survival, startup) beside it under \"onehop\".",
		RunE: func(cmd *cobra.Command, args []string) error {
			conv, ok := exportFormats[format]
			if !ok {
				names := slices.Sorted(maps.Keys(exportFormats))
				if format == "" {
					return fmt.Errorf("--format is required: supported formats are %s", strings.Join(names, ", "))
				}
				return fmt.Errorf("unknown --format %q: supported formats are %s", format, strings.Join(names, ", "))
			}
			var results []*bench.Result
			if len(args) == 0 {
				newest, err := newestResults(resultsDir)
				if err != nil {
					return err
				}
				for _, n := range slices.Sorted(maps.Keys(newest)) {
					results = append(results, newest[n])
				}
			}
			for _, p := range args {
				r, err := bench.Read(p)
				if err != nil {
					return err
				}
				results = append(results, r)
			}
			doc, err := conv(results)
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(doc, "", "  ")
			if err != nil {
				return err
			}
			b = append(b, '\n')
			if out == "-" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			return os.WriteFile(out, b, 0o644)
		},
	}
	cmd.Flags().StringVar(&format, "format", "", "output schema: smp")
	cmd.Flags().StringVar(&out, "out", "-", "output file, - for stdout")
	cmd.Flags().StringVar(&resultsDir, "results", "results", "directory of result JSON files, used when no files are given")
	return cmd
}
