package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
)

// installChromium is how a test gets Debian's Chromium where it can.
const installChromium = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium"

// chromium finds a Chromium (or Chrome) to drive, installs Debian's
// package when the test runs as root with apt-get, and otherwise fails
// with the command to run: the browser tests never skip.
func chromium(t *testing.T) string {
	t.Helper()
	find := func() string {
		for _, n := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		return ""
	}
	if p := find(); p != "" {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err == nil && os.Geteuid() == 0 {
		t.Logf("no Chromium found: %s", installChromium)
		if out, err := exec.Command("sh", "-c", installChromium).CombinedOutput(); err != nil {
			t.Fatalf("install Chromium (%s): %v\n%s", installChromium, err, out)
		}
		if p := find(); p != "" {
			return p
		}
	}
	t.Fatalf("the console's browser tests need Chromium: install it with `sudo %s` (or put chromium on PATH)", installChromium)
	return ""
}

// browser starts a headless Chromium of its own (its own profile: its own
// cookies) and returns a context driving its first tab.
func browser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.Flag("ignore-certificate-errors", true), // the simulator's own CA
		chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium %s: %v", path, err)
	}
	return ctx
}

// screenshotDir is where the console tests keep their screenshots:
// $CONSOLE_SCREENSHOTS, else /tmp/console-shots.
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CONSOLE_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "console-shots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
