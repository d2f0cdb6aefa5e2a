//! Remote inputs and roots against real servers on 127.0.0.1: an S3-compatible server (moto,
//! installed by scripts/test.sh) and a minimal HTTP file server started here.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto S3 server on a free loopback port, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("W2S_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-s3/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("moto_server"))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto, or returns None (and says so) when it is not installed outside CI.
fn start_moto() -> Option<Moto> {
    let Some(bin) = moto_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto_server not found: scripts/test.sh installs it into .venv-s3"
        );
        eprintln!("skipping S3 test: moto_server not installed (run scripts/test.sh)");
        return None;
    };
    Some(start_moto_on(&bin, free_port()))
}

/// Starts moto on `port` and waits until it accepts connections.
fn start_moto_on(bin: &Path, port: u16) -> Moto {
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

/// A raw HTTP request; returns the status code and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body_at = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (code, resp[body_at..].to_vec())
}

fn aws_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

#[test]
fn s3_root_and_inputs_match_the_local_run() {
    let Some(moto) = start_moto() else { return };
    let env = aws_env(moto.port);
    assert_eq!(http(moto.port, "PUT", "/w2s-test", b"").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let files = presplit_files(dir.path(), 8);
    // Inputs uploaded to S3 too, so the remote read path is covered.
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        let (code, _) = http(
            moto.port,
            "PUT",
            &format!("/w2s-test/data/{name}"),
            &std::fs::read(f).unwrap(),
        );
        assert_eq!(code, 200);
    }
    let local = dir.path().join("local");
    let args = |root: &str, gt: &str, w: &str, t: &str, h: &str| {
        vec![
            "split".to_string(),
            "--artifacts".into(),
            root.into(),
            "--gt".into(),
            gt.into(),
            "--w2s".into(),
            w.into(),
            "--test".into(),
            t.into(),
            "--helpful".into(),
            h.into(),
        ]
    };
    let [gt, w2s_f, test, helpful] = files.each_ref().map(|p| s(p).to_string());
    let a = args(s(&local), &gt, &w2s_f, &test, &helpful);
    ok(w2s(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    // The same split with inputs given as s3:// URLs would record different sources; keep
    // sources identical by reading the local files and only moving the root.
    let b = args("s3://w2s-test/exp1", &gt, &w2s_f, &test, &helpful);
    ok(w2s_env(
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    ));

    let q = "select split, count(*) as n from pairs group by split order by split";
    let remote_counts = ok(w2s_env(
        &[
            "sql",
            "--artifacts",
            "s3://w2s-test/exp1",
            "--format",
            "csv",
            q,
        ],
        &env,
    ));
    assert_eq!(remote_counts, "split,n\ngt,8\nhelpful,8\ntest,8\nw2s,8\n");
    let local_counts = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&local),
        "--format",
        "csv",
        q,
    ]));
    assert_eq!(remote_counts, local_counts);

    // Byte-for-byte the same table part, under the same name.
    let part = pairs_part(&local);
    let rel = part
        .strip_prefix(&local)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let remote_bytes = s3_get(moto.port, &format!("exp1/{rel}"));
    assert_eq!(remote_bytes, std::fs::read(&part).unwrap());

    // Inputs read from s3:// URLs.
    let s3 = |n: &str| format!("s3://w2s-test/data/{n}.jsonl");
    let c = args(
        "s3://w2s-test/exp2",
        &s3("gt"),
        &s3("w2s"),
        &s3("test"),
        &s3("helpful"),
    );
    ok(w2s_env(
        &c.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    ));
    let from_s3 = ok(w2s_env(
        &[
            "sql",
            "--artifacts",
            "s3://w2s-test/exp2",
            "--format",
            "csv",
            q,
        ],
        &env,
    ));
    assert_eq!(from_s3, local_counts);
    let ids = "select pair_id from pairs order by pair_id";
    assert_eq!(
        ok(w2s_env(
            &[
                "sql",
                "--artifacts",
                "s3://w2s-test/exp2",
                "--format",
                "csv",
                ids
            ],
            &env
        )),
        ok(w2s(&[
            "sql",
            "--artifacts",
            s(&local),
            "--format",
            "csv",
            ids
        ]))
    );

    // Bad input against an S3 root leaves nothing there.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"chosen\": 1}").unwrap();
    let d = args("s3://w2s-test/exp3", s(&bad), &w2s_f, &test, &helpful);
    let o = w2s_env(&d.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    assert!(!o.status.success());
    assert_eq!(s3_list(moto.port, "exp3"), Vec::<String>::new());
    assert!(!s3_list(moto.port, "exp1").is_empty());

    // A model read from an S3 prefix scores like the same model on disk.
    let model = fixture_model("gpt2");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let (code, _) = http(
            moto.port,
            "PUT",
            &format!("/w2s-test/models/gpt2/{f}"),
            &std::fs::read(model.join(f)).unwrap(),
        );
        assert_eq!(code, 200);
    }
    let mut env = env.clone();
    env.push(("W2S_CACHE", s(&dir.path().join("cache")).to_string()));
    let root = dir.path().join("scored");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    score(&root, s(&model), "local", &[]);
    ok(w2s_env(
        &[
            "score",
            "--artifacts",
            s(&root),
            "--model",
            "s3://w2s-test/models/gpt2",
            "--run-id",
            "s3",
        ],
        &env,
    ));
    assert_eq!(same_margins(&root, "local", "s3"), "n\n32\n");
}

fn s3_client(port: u16) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_bucket_name("w2s-test")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_region("us-east-1")
        .build()
        .unwrap()
}

fn s3_get(port: u16, key: &str) -> Vec<u8> {
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3_client(port);
        let path = object_store::path::Path::from(key);
        store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    })
}

fn s3_list(port: u16, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = s3_client(port);
        let prefix = object_store::path::Path::from(prefix);
        let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        metas.into_iter().map(|m| m.location.to_string()).collect()
    })
}

/// Serves files from `dir` over HTTP/1.1 on a free port, one request per connection.
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut authorized = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                authorized |= h.to_ascii_lowercase().trim() == "authorization: bearer secret-token";
            }
            let path = request
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let mut stream = stream;
            // Like the hub: a private repo needs the token.
            if path.starts_with("private-org/") && !authorized {
                let _ = write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
            match std::fs::read(dir.join(path)) {
                Ok(body) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                Err(_) => {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    port
}

#[test]
fn models_from_http_and_the_hub_by_repo_id() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    let model = fixture_model("gpt2");
    for sub in [
        "models/gpt2",
        "tiny-org/tiny-gpt2/resolve/main",
        "private-org/tiny-gpt2/resolve/main",
    ] {
        std::fs::create_dir_all(www.join(sub)).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(model.join(f), www.join(sub).join(f)).unwrap();
        }
    }
    let port = serve(www);
    let env = vec![
        ("W2S_CACHE", s(&dir.path().join("cache")).to_string()),
        ("HF_ENDPOINT", format!("http://127.0.0.1:{port}")),
    ];
    let root = dir.path().join("art");
    ok(w2s(&["split", "--sample", "--artifacts", s(&root)]));
    score(&root, s(&model), "local", &[]);
    let http_url = format!("http://127.0.0.1:{port}/models/gpt2");
    ok(w2s_env(
        &[
            "score",
            "--artifacts",
            s(&root),
            "--model",
            &http_url,
            "--run-id",
            "http",
        ],
        &env,
    ));
    ok(w2s_env(
        &[
            "score",
            "--artifacts",
            s(&root),
            "--model",
            "hf://tiny-org/tiny-gpt2",
            "--run-id",
            "hub",
        ],
        &env,
    ));
    assert_eq!(same_margins(&root, "local", "http"), "n\n32\n");
    assert_eq!(same_margins(&root, "local", "hub"), "n\n32\n");
    // A private repo: refused without HF_TOKEN, read with it.
    let o = w2s_env(
        &[
            "score",
            "--artifacts",
            s(&root),
            "--model",
            "hf://private-org/tiny-gpt2",
            "--run-id",
            "private",
        ],
        &env,
    );
    assert!(!o.status.success(), "a private repo needs the token");
    let mut with_token = env.clone();
    with_token.push(("HF_TOKEN", "secret-token".into()));
    score(&root, "hf://private-org/tiny-gpt2", "private", &with_token);
    assert_eq!(same_margins(&root, "local", "private"), "n\n32\n");
    // Converted from the hub into a local Hugging Face folder.
    let out = dir.path().join("converted");
    ok(w2s_env(
        &[
            "convert",
            "--model",
            "hf://tiny-org/tiny-gpt2",
            "--out",
            s(&out),
        ],
        &env,
    ));
    assert!(out.join("model.safetensors").exists() && out.join("tokenizer.json").exists());
    // A missing repo is a clear error naming the URL.
    let o = w2s_env(
        &[
            "score",
            "--artifacts",
            s(&root),
            "--model",
            "hf://tiny-org/nope",
            "--run-id",
            "x",
        ],
        &env,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tiny-org/nope/resolve/main/config.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn http_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let files = presplit_files(dir.path(), 5);
    let port = serve(dir.path().to_path_buf());
    let url = |n: &str| format!("http://127.0.0.1:{port}/{n}.jsonl");
    let root = dir.path().join("art");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&root),
        "--gt",
        &url("gt"),
        "--w2s",
        &url("w2s"),
        "--test",
        &url("test"),
    ]));
    let local = dir.path().join("local");
    ok(w2s(&[
        "split",
        "--artifacts",
        s(&local),
        "--gt",
        s(&files[0]),
        "--w2s",
        s(&files[1]),
        "--test",
        s(&files[2]),
    ]));
    let ids = "select split, pair_id from pairs order by split, split_index";
    assert_eq!(
        ok(w2s(&[
            "sql",
            "--artifacts",
            s(&root),
            "--format",
            "csv",
            ids
        ])),
        ok(w2s(&[
            "sql",
            "--artifacts",
            s(&local),
            "--format",
            "csv",
            ids
        ]))
    );
    let o = w2s(&[
        "split",
        "--artifacts",
        s(&dir.path().join("x")),
        "--gt",
        &url("missing"),
        "--w2s",
        &url("w2s"),
        "--test",
        &url("test"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.jsonl"), "{}", stderr(&o));
}

/// The reward-modeling chain with an S3 root: checkpoints, state and tables on S3, a run killed
/// and resumed from its S3 state, and the same results as a local root.
#[test]
fn s3_root_runs_the_reward_model_chain() {
    let Some(moto) = start_moto() else { return };
    assert_eq!(http(moto.port, "PUT", "/w2s-test", b"").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let mut env = aws_env(moto.port);
    env.push(("W2S_CACHE", dir.path().join("cache").display().to_string()));
    let model = fixture_model("gpt2").display().to_string();
    let local = dir.path().join("local");
    let remote = "s3://w2s-test/rm";
    let run = |root: &str, extra: &[&str], env: &[(&str, String)]| {
        let mut a: Vec<String> = extra.iter().map(|x| x.to_string()).collect();
        a.extend(["--artifacts".to_string(), root.to_string()]);
        w2s_env(&a.iter().map(String::as_str).collect::<Vec<_>>(), env)
    };
    let oracle = crate::rm::oracle_args();
    let oracle: Vec<&str> = oracle.iter().map(String::as_str).collect();
    for root in [s(&local), remote] {
        crate::rm::split_oracle_data_env(root, &env);
        let mut gt = vec![
            "gt-train",
            "--model",
            &model,
            "--run-id",
            "teacher",
            "--save-every",
            "1",
        ];
        gt.extend(&oracle);
        if root == remote {
            let mut killed_env = env.clone();
            killed_env.push(("W2S_FAULT", "saved:2".into()));
            assert!(!run(root, &gt, &killed_env).status.success());
            assert!(
                s3_list(moto.port, "rm/state/train/teacher").len() == 2,
                "state on S3"
            );
            let out = ok(run(root, &gt, &env));
            assert!(out.contains("resumed at step 2"), "{out}");
            assert!(s3_list(moto.port, "rm/state").is_empty(), "state cleared");
        } else {
            ok(run(root, &gt, &env));
        }
        ok(run(
            root,
            &["weak-label", "--run", "teacher", "--max-ctx", "48"],
            &env,
        ));
        let mut st = vec![
            "w2s-train",
            "--model",
            &model,
            "--teacher",
            "teacher",
            "--objective",
            "explicit",
            "--run-id",
            "student",
        ];
        st.extend(&oracle);
        ok(run(root, &st, &env));
        for r in ["teacher", "student"] {
            ok(run(
                root,
                &["score", "--run-id", r, "--max-ctx", "48"],
                &env,
            ));
        }
    }
    let q =
        "select run_id, split_index, margin, confidence from scores order by run_id, split_index";
    let get = |root: &str| ok(run(root, &["sql", "--format", "csv", q], &env));
    let (a, b) = (get(s(&local)), get(remote));
    assert_eq!(a.lines().count(), 13, "{a}");
    assert_eq!(a, b);
    assert!(s3_list(moto.port, "rm/models/student")
        .iter()
        .any(|k| k.ends_with("model.safetensors")));
}

/// The S3 server stops while a gt-train is writing its state: the run ends with a clear error
/// naming the object (after `W2S_STORE_RETRY_SECS` of retries), commits nothing, and once the
/// server is back the same commands succeed. (moto keeps its objects in memory, so the restarted
/// server is empty and the rerun starts from the split; a persistent S3 would resume.)
#[test]
fn s3_server_stopped_mid_write_is_a_clear_error_then_a_rerun_succeeds() {
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    let bin = moto_binary().unwrap();
    assert_eq!(http(port, "PUT", "/w2s-test", b"").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let mut env = aws_env(port);
    env.push(("W2S_CACHE", dir.path().join("cache").display().to_string()));
    env.push(("W2S_STORE_RETRY_SECS", "3".into()));
    let remote = "s3://w2s-test/restart";
    let gt = crate::rm::fixture_gt_args(remote, 1);
    crate::rm::split_oracle_data_env(remote, &env);
    let child = Command::new(env!("CARGO_BIN_EXE_w2s"))
        .args(&gt)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("W2S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while s3_list(port, "restart/state/train/ceiling").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no state was written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(moto); // the server goes away mid-run
    let o = wait_limited(
        child,
        Duration::from_secs(120),
        "gt-train without its server",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(74), "{err}");
    assert!(
        err.contains("s3://w2s-test/restart/"),
        "names the object: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let moto = start_moto_on(&bin, port);
    assert_eq!(http(moto.port, "PUT", "/w2s-test", b"").0, 200);
    crate::rm::split_oracle_data_env(remote, &env);
    ok(w2s_env(
        &gt.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    ));
    let local = dir.path().join("local");
    crate::rm::split_oracle_data(&local);
    let mut gl = gt.clone();
    gl[2] = s(&local).to_string();
    ok(w2s(&gl.iter().map(String::as_str).collect::<Vec<_>>()));
    let q = "select step, loss, lr, accuracy, tokens from train_log order by step";
    let remote_log = ok(w2s_env(
        &["sql", "--artifacts", remote, "--format", "csv", q],
        &env,
    ));
    let local_log = ok(w2s(&[
        "sql",
        "--artifacts",
        s(&local),
        "--format",
        "csv",
        q,
    ]));
    assert_eq!(remote_log, local_log);
}

/// Two `w2s run` on one S3 root: the second refuses (exit 75, naming the holder) while the
/// first runs; after the first is killed (SIGKILL: its lock object stays), a run refuses until
/// the lock is stale, then takes it over and finishes with the tables of a local run.
#[test]
fn two_runs_on_one_s3_root_never_share_it() {
    let Some(moto) = start_moto() else { return };
    assert_eq!(http(moto.port, "PUT", "/w2s-test", b"").0, 200);
    let dir = tempfile::tempdir().unwrap();
    let mut env = aws_env(moto.port);
    env.push(("W2S_CACHE", dir.path().join("cache").display().to_string()));
    let objectives = r#"["none"]"#;
    let remote = "s3://w2s-test/conc";
    let file = dir.path().join("s3.toml");
    std::fs::write(
        &file,
        crate::pipeline::mini_at(remote, objectives, r#"["rm"]"#),
    )
    .unwrap();
    let local = dir.path().join("local");
    let local_file = dir.path().join("local.toml");
    std::fs::write(
        &local_file,
        crate::pipeline::mini_at(s(&local), objectives, r#"["rm"]"#),
    )
    .unwrap();
    ok(w2s(&["run", s(&local_file)]));

    let mut first = Command::new(env!("CARGO_BIN_EXE_w2s"))
        .args(["run", s(&file)])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("W2S_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let locked = || {
        s3_list(moto.port, "conc/runner")
            .iter()
            .any(|k| k.ends_with("runner/lock.json"))
    };
    while !locked() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no lock object appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = w2s_env(&["run", s(&file)], &env);
    assert_eq!(second.status.code(), Some(75), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another `w2s run`"),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("\"pid\""),
        "names the holder: {}",
        stderr(&second)
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The dead run's lock is fresh: refused. Stale after 2 s (test setting): taken over.
    let refused = w2s_env(&["run", s(&file)], &env);
    assert_eq!(refused.status.code(), Some(75), "{}", stderr(&refused));
    std::thread::sleep(Duration::from_secs(4));
    let mut stale = env.clone();
    stale.push(("W2S_LOCK_STALE_SECS", "2".into()));
    ok(w2s_env(&["run", s(&file)], &stale));
    assert!(!locked(), "lock released");
    for q in [
        "select * from pairs order by pair_id",
        "select * from labels order by run_id, split_index",
        "select * from scores order by run_id, split_index",
        "select run_id, step, loss, lr, accuracy, pairs, tokens from train_log order by run_id, step",
    ] {
        let a = ok(w2s(&["sql", "--artifacts", s(&local), "--format", "csv", q]));
        let b = ok(w2s_env(&["sql", "--artifacts", remote, "--format", "csv", q], &env));
        assert_eq!(a, b, "{q}");
    }
}
