//! Where `--output` may write: never into the live database, never through a link planted at
//! the temporary path.

use crate::support::bin::{output, runner, text};
use crate::support::*;
use runner::Exit;
use runner::mock::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_refused_when_it_names_the_database_and_never_follows_a_planted_link() {
    let s = Scratch::new();
    let mock = mock(MockConfig::default()).await;
    let input = s.prompts("p.jsonl", 0..3);
    let (file, db, url) = (input.display().to_string(), s.db_arg(), mock.base_url());
    assert_eq!(
        run(&submit_args(&file, &db, &url, &[]), env())
            .await
            .expect("runs"),
        Exit::Success
    );
    let link = s.path("results.csv");
    std::os::unix::fs::symlink(s.db(), &link).expect("link");
    for (command, target) in [
        ("export", s.db()),
        ("export", link.clone()),
        ("report", s.db()),
    ] {
        let mut cmd = runner(s.dir.path());
        cmd.args([
            command,
            "--db",
            &db,
            "--output",
            &target.display().to_string(),
        ]);
        let out = output(cmd).await;
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{command} {}: {stderr}",
            target.display()
        );
        assert!(
            stderr.contains("writing there would destroy the journal"),
            "{stderr}"
        );
    }
    assert_eq!(integrity(&s.db()), "ok");
    assert_eq!(journaled_successes(&s.db()).len(), 3);

    // A link planted at the temporary path is replaced, not followed.
    let victim = s.write("victim.txt", "keep me");
    std::os::unix::fs::symlink(&victim, s.path("out.csv.partial")).expect("link");
    let mut cmd = runner(s.dir.path());
    cmd.args(["export", "--db", &db, "--output", "out.csv"]);
    let out = output(cmd).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
    let csv = std::fs::read_to_string(s.path("out.csv")).expect("read");
    assert!(csv.starts_with("custom_id,"), "{csv}");
}
