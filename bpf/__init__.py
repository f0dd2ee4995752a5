"""The data plane's BPF C sources, shipped as package data (see weir.nodeagent.dataplane.layout)."""
