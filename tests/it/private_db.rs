//! A database left world-readable (an older runner, a copy made with a loose umask) is made
//! private, with its -wal and -shm files, the next time a job opens it.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;
use runner::Exit;

fn mode(path: &std::path::Path) -> Option<u32> {
    Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_world_readable_database_and_its_wal_and_shm_become_private() {
    let fx = Fixture::for_job("p").prompts(0..3).start().await;
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    let s = &fx.scratch;

    let wal = s.path("runner.db-wal");
    let shm = s.path("runner.db-shm");
    // Keep the -wal and -shm files in place while the runner opens the database.
    let holder = rusqlite::Connection::open(s.db()).expect("open");
    holder
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0))
        .expect("read");
    for path in [s.db(), wal.clone(), shm.clone()] {
        assert!(path.exists(), "{}", path.display());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    s.prompts("p.jsonl", 0..4);
    assert_eq!(fx.submit(&[]).await, Exit::Success);
    for path in [s.db(), wal, shm] {
        assert_eq!(mode(&path), Some(0o600), "{}", path.display());
    }
    drop(holder);
}
