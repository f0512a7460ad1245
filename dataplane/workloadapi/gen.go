package workloadapi

// workload.pb.go is generated from workload.proto and committed. Regenerating it needs protoc
// and the well-known protos (Debian: protobuf-compiler, libprotobuf-dev); protoc-gen-go is
// built from the google.golang.org/protobuf version in go.mod, so the generated code matches
// the runtime it links against.
//
//go:generate go build -o .protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
//go:generate protoc --plugin=protoc-gen-go=.protoc-gen-go -I../.. -I/usr/include --go_out=../.. --go_opt=paths=source_relative dataplane/workloadapi/workload.proto
//go:generate rm -f .protoc-gen-go
