//! Where `--output` may write: never into the live database, never through a link planted at
//! the temporary path.

use crate::support::bin::{output, text};
use crate::support::*;
use runner::Exit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_refused_when_it_names_the_database_and_never_follows_a_planted_link() {
    let fx = Fixture::for_job("p").prompts(0..3).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let (s, db) = (&fx.scratch, fx.db_arg());
    let link = s.path("results.csv");
    std::os::unix::fs::symlink(s.db(), &link).expect("link");
    for (command, target) in [
        ("export", s.db()),
        ("export", link.clone()),
        ("report", s.db()),
    ] {
        let target_arg = target.display().to_string();
        let out = output(fx.bin(&[command, "--db", &db, "--output", &target_arg])).await;
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
    let out = output(fx.bin(&["export", "--db", &db, "--output", "out.csv"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me");
    let csv = std::fs::read_to_string(s.path("out.csv")).expect("read");
    assert!(csv.starts_with("custom_id,"), "{csv}");
}
