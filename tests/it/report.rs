//! `runner report` renders in a real browser: headless Chromium loads the page offline, the
//! charts are in the DOM after rendering, and the screenshot is not blank.
//!
//! Without Chromium the test is skipped with a message, unless `CI` is set: then it fails, so CI
//! never passes without having looked at the page.
// Helpers of a test crate: a failed setup panics with its message (clippy's allow-*-in-tests
// covers only #[test] fns and #[cfg(test)] items).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runner::Exit;
use runner::mock::{Fault, MockConfig, Spike};

use crate::support::*;

/// Longest a Chromium run may take (a cold start on a loaded machine takes a few seconds).
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

/// The Chromium binary on PATH, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// Runs headless Chromium on `page` with `extra` flags in a fresh profile; returns stdout.
fn browse(browser: &Path, profile: &Path, page: &Path, extra: &[&str]) -> Vec<u8> {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::io::BufReader::new(stdout), &mut out).map(|_| out)
    });
    let deadline = Instant::now() + BROWSER_LIMIT;
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within {BROWSER_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader").expect("read stdout")
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let word = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (word(16), word(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_renders_its_charts_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but chromium is not installed: install it (apt-get install -y chromium) so the report is checked"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install -y chromium); the report was not rendered"
        );
        return;
    };
    let fx = Fixture::for_job("report")
        .mock(MockConfig {
            latency: Duration::from_millis(10),
            missing_scope_rate: 0.03,
            server_error_rate: 0.02,
            // Measured from the mock's start: wide enough, and the job long enough (250 lines
            // at 50/s), that a submit which starts seconds late on a loaded machine still
            // meets the spike.
            spikes: vec![Spike {
                start: Duration::from_millis(500),
                end: Duration::from_millis(4000),
                fault: Fault::MissingScope,
            }],
            ..MockConfig::default()
        })
        .prompts(0..250)
        .start()
        .await;
    let exit = fx.submit(&["--concurrency", "8", "--rpm", "3000"]).await;
    assert_eq!(exit, Exit::Success);
    let s = fx.shutdown().await;
    let db = s.db_arg();

    let page = s.path("report.html");
    let page_arg = page.display().to_string();
    let exit = run(&["report", "--db", &db, "--output", &page_arg], env())
        .await
        .expect("report");
    assert_eq!(exit, Exit::Success);
    let html = std::fs::read_to_string(&page).expect("page");
    for banned in [
        "<script src",
        "<link",
        "http://",
        "https://",
        "@import",
        "url(",
    ] {
        assert!(
            !html.contains(banned),
            "the page must load nothing: found {banned}"
        );
    }

    let blank = s.write("blank.html", "<!DOCTYPE html><html><body></body></html>");
    let (dom, shot, blank_shot) = tokio::task::spawn_blocking({
        let (browser, dir) = (browser.clone(), s.dir.path().to_owned());
        let (page, blank) = (page.clone(), blank.clone());
        move || {
            let dom = browse(&browser, &dir.join("profile-dom"), &page, &["--dump-dom"]);
            let shot = dir.join("report.png");
            let blank_shot = dir.join("blank.png");
            for (target, file) in [(&page, &shot), (&blank, &blank_shot)] {
                let profile = dir.join(format!("profile-{}", file.display().to_string().len()));
                browse(
                    &browser,
                    &profile,
                    target,
                    &[
                        &format!("--screenshot={}", file.display()),
                        "--window-size=1200,900",
                    ],
                );
            }
            (
                String::from_utf8(dom).expect("utf-8 DOM"),
                std::fs::read(&shot).expect("screenshot written"),
                std::fs::read(&blank_shot).expect("blank screenshot written"),
            )
        }
    })
    .await
    .expect("browser");

    for id in [
        "chart-attempts",
        "chart-errors",
        "chart-latency",
        "chart-keys",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "the DOM lacks #{id}");
    }
    let bars = dom.matches("class=\"bar\"").count();
    assert!(bars >= 10, "{bars} bars in the attempts chart");
    assert!(dom.contains("class=\"spike-band\""), "the spike is shaded");
    assert!(
        dom.contains("class=\"breaker-open\""),
        "the breaker's pause is marked"
    );
    assert!(
        dom.contains("class=\"line p99\""),
        "latency lines are drawn"
    );
    assert!(
        dom.contains("<code>req_"),
        "the spike's request ids are listed"
    );
    assert!(
        dom.contains("All 250 requests succeeded."),
        "the summary says how it ended"
    );

    assert_eq!(png_size(&shot), (1200, 900));
    assert_eq!(png_size(&blank_shot), (1200, 900));
    // A blank page compresses to almost nothing; cards, charts and text do not.
    assert!(
        shot.len() > 10 * blank_shot.len(),
        "the screenshot looks blank: {} bytes against {} for an empty page",
        shot.len(),
        blank_shot.len()
    );
}
