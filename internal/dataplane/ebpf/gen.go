package ebpf

// The BPF objects are built from bpf/ with Debian's clang and committed,
// so building podnet needs no clang; `make bpf` regenerates them and CI
// checks that they match the sources.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package ebpf socklb ../../../bpf/socklb.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -go-package ebpf nodeport ../../../bpf/nodeport.c
