package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/deploy/image"
)

// imageCmd builds the agent's container image as a docker-archive tarball, with no Docker
// daemon and no registry (`make image`).
func imageCmd() *cobra.Command {
	var opts image.Options
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build the onehop-agent image (static agent on an empty base) into a docker-archive tarball",
		Long: `Build onehop-agent statically (CGO_ENABLED=0, -trimpath, no build id) from --source, put it
at /onehop-agent in a single-platform linux image on an empty base, and write a docker-archive
tarball for docker load, podman load, ctr images import or kind load image-archive. The same
source gives the same digest: every timestamp is SOURCE_DATE_EPOCH, else the HEAD commit's time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Out == "" {
				opts.Out = filepath.Join(opts.Source, image.DefaultOut)
			}
			res, err := image.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Printf("image %s\n  digest %s\n  config (image id) %s\n  tarball %s (agent %d bytes)\n",
				res.Ref, res.Digest, res.ConfigDigest, res.Path, res.BinaryBytes)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Source, "source", ".", "the onehop module's root: the agent is built from its ./cmd/onehop-agent")
	f.StringVar(&opts.Out, "out", "", "tarball to write (default <source>/"+image.DefaultOut+")")
	f.StringVar(&opts.Tag, "tag", "", "tag, or full reference, of the image (default "+image.Repository+":<git describe --tags --always --dirty>)")
	f.StringVar(&opts.Binary, "binary", "", "package this static onehop-agent instead of building one")
	f.StringVar(&opts.Arch, "arch", "", "GOARCH of the image (default this machine's)")
	f.StringVar(&opts.Package, "package", "", "main package to build instead of the agent's (./cmd/onehop-pause: the sandbox image of a cluster without a registry)")
	f.StringVar(&opts.Entrypoint, "entrypoint", "", "the binary's path in the image (default "+image.Entrypoint+")")
	return cmd
}
