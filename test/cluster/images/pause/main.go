// Command pause is the test cluster's pod sandbox ("infra") container. It
// sleeps until SIGTERM or SIGINT and reaps the zombies it inherits when it
// runs as PID 1 of a pod that shares its PID namespace. Build it static:
// CGO_ENABLED=0 go build -trimpath.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "podnet-pause/1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		switch s {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal %v\n", s)
			os.Exit(0)
		}
	}
}

// reap collects every child that has exited. Several SIGCHLDs can coalesce
// into one, so it loops until there is nothing left to wait for.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
