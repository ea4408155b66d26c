// Command mkimages writes the test cluster's images as OCI image archives,
// one per image, for `ctr -n k8s.io images import`. It builds the pause
// binary itself; run it from inside the podnet module:
//
//	go run ./test/cluster/images/cmd/mkimages -out DIR -agnhost BIN -coredns BIN -podnet BIN
//
// An archive is rewritten only when the fingerprint of its inputs (contents
// of every file, configuration, reference) differs from the one stored next to
// it in ARCHIVE.inputs. DIR/images.txt lists "REF FILE" for every image.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podnet/podnet/test/cluster/images"
)

func main() {
	var (
		out        = flag.String("out", "", "output directory (required)")
		agnhost    = flag.String("agnhost", "", "agnhost binary (empty: no agnhost image)")
		coredns    = flag.String("coredns", "", "coredns binary (empty: no CoreDNS image, no /coredns in agnhost and glibc-dns-testing)")
		podnet     = flag.String("podnet", "", "podnet binary (empty: no podnet image)")
		regression = flag.String("regression-issue-74839", "", "regression-issue-74839 binary (optional)")
		pause      = flag.String("pause", "", "prebuilt pause binary (default: build ./test/cluster/images/pause)")
		only       = flag.String("only", "", "comma-separated short names of the images to write (default all)")
		force      = flag.Bool("force", false, "rewrite archives even if up to date")
		jobs       = flag.Int("j", runtime.NumCPU(), "images packed in parallel")
	)
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *out, *pause, *only, *force, *jobs, images.Binaries{
		Agnhost: *agnhost, CoreDNS: *coredns, Podnet: *podnet, RegressionIssue74839: *regression,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "mkimages:", err)
		os.Exit(1)
	}
}

type result struct {
	file    string
	ref     string
	status  string
	size    int64
	elapsed time.Duration
	err     error
}

func run(ctx context.Context, out, pause, only string, force bool, jobs int, bins images.Binaries) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if pause == "" {
		tmp, err := os.MkdirTemp("", "mkimages-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		pause = filepath.Join(tmp, "pause")
		if err := images.BuildPause(ctx, "", pause); err != nil {
			return err
		}
	}
	bins.Pause = pause

	imgs, err := images.Catalogue(bins)
	if err != nil {
		return err
	}
	if only != "" {
		want := map[string]bool{}
		for _, n := range strings.Split(only, ",") {
			want[strings.TrimSpace(n)] = true
		}
		var sel []images.Image
		for _, im := range imgs {
			if want[im.Name] {
				sel = append(sel, im)
				delete(want, im.Name)
			}
		}
		if len(want) > 0 {
			var names []string
			for n := range want {
				names = append(names, n)
			}
			sort.Strings(names)
			return fmt.Errorf("unknown or unavailable images: %s", strings.Join(names, ", "))
		}
		imgs = sel
	}
	for _, im := range imgs {
		if len(im.Missing) > 0 {
			fmt.Fprintf(os.Stderr, "mkimages: %s: optional host tools not found, left out: %s\n", im.Name, strings.Join(im.Missing, " "))
		}
	}

	if jobs < 1 {
		jobs = 1
	}
	results := make([]result, len(imgs))
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				results[i] = result{ref: imgs[i].Ref, err: ctx.Err()}
				return
			}
			results[i] = writeImage(out, imgs[i], force)
		}()
	}
	wg.Wait()

	var list strings.Builder
	var failed []string
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(os.Stderr, "mkimages: %s: %v\n", r.ref, r.err)
			failed = append(failed, r.ref)
			continue
		}
		fmt.Printf("%-10s %8.1f MB  %-62s %s", r.status, float64(r.size)/1e6, r.ref, r.file)
		if r.status == "wrote" {
			fmt.Printf("  (%.1fs)", r.elapsed.Seconds())
		}
		fmt.Println()
		fmt.Fprintf(&list, "%s %s\n", r.ref, r.file)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d image(s) failed", len(failed))
	}
	if only == "" {
		if err := os.WriteFile(filepath.Join(out, "images.txt"), []byte(list.String()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func writeImage(out string, im images.Image, force bool) result {
	start := time.Now()
	file := filepath.Join(out, images.ArchiveName(im.Ref))
	res := result{file: file, ref: im.Ref}
	fp, err := images.Fingerprint(im.Ref, im.Root, im.Config)
	if err != nil {
		res.err = err
		return res
	}
	stamp := file + ".inputs"
	if !force {
		if old, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(old)) == fp {
			if fi, err := os.Stat(file); err == nil {
				res.status, res.size = "up-to-date", fi.Size()
				return res
			}
		}
	}
	tmp, err := os.CreateTemp(out, ".mkimages-*.tmp")
	if err != nil {
		res.err = err
		return res
	}
	defer os.Remove(tmp.Name())
	_ = os.Remove(stamp)
	if err := images.Pack(tmp, im.Ref, im.Root, im.Config); err != nil {
		tmp.Close()
		res.err = err
		return res
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		res.err = err
		return res
	}
	if err := tmp.Close(); err != nil {
		res.err = err
		return res
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		res.err = err
		return res
	}
	if err := os.WriteFile(stamp, []byte(fp+"\n"), 0o644); err != nil {
		res.err = err
		return res
	}
	fi, err := os.Stat(file)
	if err != nil {
		res.err = err
		return res
	}
	res.status, res.size, res.elapsed = "wrote", fi.Size(), time.Since(start)
	return res
}
