//! A torn transaction at the end of Redis's AOF, as a crash in the middle of a write leaves
//! it, and the two-write script whose halves must never be applied apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The newest incremental AOF file in a Redis data directory.
pub fn incr_file(data_dir: &Path) -> PathBuf {
    std::fs::read_dir(data_dir.join("appendonlydir"))
        .expect("an appendonlydir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .max()
        .expect("an incremental AOF")
}

/// Appends the start of a transaction cut inside its second command.
pub fn append_torn_transaction(data_dir: &Path) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(incr_file(data_dir))
        .unwrap();
    std::io::Write::write_all(
        &mut file,
        b"*1\r\n$5\r\nMULTI\r\n*3\r\n$6\r\nINCRBY\r\n$7\r\ncounter\r\n$1\r\n1\r\n*3\r\n$3\r\nSE",
    )
    .unwrap();
}

/// One script of two writes, as apply.lua is (Redis logs it as MULTI … EXEC): `counter` goes
/// up by one and `offset` is set to `offset`. Then waits until Redis has written it to its
/// AOF file: a SIGKILL keeps what the kernel holds, so the fsync need not have run, but with
/// `everysec` Redis may put the write itself off while an fsync is slow.
pub fn write_pair(url: &str, offset: i64) {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let before = aof_size(&mut conn);
    redis::cmd("EVAL")
        .arg("redis.call('INCRBY', KEYS[1], 1); redis.call('SET', KEYS[2], ARGV[1])")
        .arg(2)
        .arg("counter")
        .arg("offset")
        .arg(offset)
        .query::<()>(&mut conn)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while aof_size(&mut conn) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the script never reached the AOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `aof_current_size` from `INFO persistence`: what Redis has written to its AOF so far.
fn aof_size(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("persistence").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("aof_current_size:"))
        .expect("AOF is on")
        .trim()
        .parse()
        .unwrap()
}

/// (`counter`, `offset`).
pub fn read_pair(url: &str) -> (i64, i64) {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::pipe()
        .get("counter")
        .get("offset")
        .query(&mut conn)
        .unwrap()
}
