package cli

import (
	"strings"
	"testing"
)

// TestParseAgentConfigLogLevel: the config file's logLevel is checked as
// the flag is, with a message that names the choices.
func TestParseAgentConfigLogLevel(t *testing.T) {
	for _, lv := range []string{"debug", "info", "warn", "error", "DEBUG"} {
		if err := ParseAgentConfig([]byte("logLevel: " + lv + "\n")); err != nil {
			t.Errorf("logLevel %s: %v", lv, err)
		}
	}
	err := ParseAgentConfig([]byte("logLevel: loud\n"))
	if err == nil || !strings.Contains(err.Error(), "want debug, info, warn or error") {
		t.Fatalf("logLevel loud: got %v", err)
	}
}
