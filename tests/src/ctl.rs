//! `ringctl` run in the test process (`ringcache::ctl::run`), against a cluster's gRPC address.

use serde_json::Value;

/// What one ringctl run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code.
    pub code: i32,
    /// What it wrote to stdout (bytes: `get` writes values as they are).
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl Outcome {
    /// Stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    /// Stdout as one JSON document, once the run succeeded.
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.text()))
    }

    /// Stdout as text, once the run succeeded and wrote nothing to stderr.
    pub fn ok(&self) -> String {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        assert!(self.stderr.is_empty(), "stderr: {}", self.stderr);
        self.text()
    }
}

/// `ringctl --cluster CLUSTER ARGS...` with `stdin` as its standard input.
pub async fn ctl_stdin(cluster: &str, args: &[&str], stdin: &[u8]) -> Outcome {
    let mut argv = vec!["--cluster".to_owned(), cluster.to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let mut input = stdin;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let code = ringcache::ctl::run(argv, &mut input, &mut stdout, &mut stderr).await;
    Outcome {
        code,
        stdout,
        stderr: String::from_utf8(stderr).expect("stderr is UTF-8"),
    }
}

/// `ringctl --cluster CLUSTER ARGS...` with an empty standard input.
pub async fn ctl(cluster: &str, args: &[&str]) -> Outcome {
    ctl_stdin(cluster, args, &[]).await
}
