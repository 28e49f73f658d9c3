//! LUNA16 from Zenodo: record metadata, resumable verified downloads, streaming unzip.
//!
//! LUNA16 lives in two Zenodo records: 3723295 (subset0–6, the CSV files, lung masks,
//! evaluation script) and 4121926 (subset7–9). File names, sizes and MD5 sums come from
//! the record JSON (`{base}/api/records/{id}`: `files[]` with `key`, `size`,
//! `checksum` = `md5:<hex>` and `links.self`). A file downloads into `<name>.part`,
//! resuming with an HTTP Range request after an interruption, and takes its final name
//! only once its size and MD5 match. `subsetK.zip` is then unpacked entry by entry into
//! `subsetK/` (each entry through a temporary name) and a marker `subsetK/.unzipped`
//! records the zip's MD5, so a later run skips both the download and the unzip.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};

/// Zenodo records of LUNA16 and the subsets each holds.
pub const RECORDS: [(&str, std::ops::RangeInclusive<usize>); 2] =
    [("3723295", 0..=6), ("4121926", 7..=9)];

/// Download settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL without a trailing slash, e.g. `https://zenodo.org`.
    pub base_url: String,
    /// Attempts per file (at least 1).
    pub retries: u32,
    /// First back-off delay; doubles per attempt, capped at 60 s.
    pub backoff: Duration,
    /// Keep `subsetK.zip` after unzipping.
    pub keep_zips: bool,
    /// Show progress bars (only ever on a terminal).
    pub progress: bool,
}

/// A file listed in a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// MD5, lowercase hex.
    pub md5: String,
    /// Download URL.
    pub url: String,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(8)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .user_agent("models-genesis-rs xtask prepare-data")
        .build()
}

/// Reads a record's file list from `{base}/api/records/{id}`.
pub fn fetch_record(agent: &ureq::Agent, options: &Options, id: &str) -> Result<Vec<RemoteFile>> {
    let url = format!("{}/api/records/{id}", options.base_url);
    let text = with_retries(options, &url, || {
        let response = agent.get(&url).call().map_err(classify)?;
        response.into_string().map_err(|e| Attempt::Retry(e.into()))
    })?;
    parse_record(&text).with_context(|| format!("{url}: unexpected record JSON"))
}

/// Parses Zenodo's record JSON (`files` as a list, or as `{entries: {...}}`).
pub fn parse_record(text: &str) -> Result<Vec<RemoteFile>> {
    let json: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let files = &json["files"];
    let list: Vec<&serde_json::Value> = match files {
        serde_json::Value::Array(items) => items.iter().collect(),
        serde_json::Value::Object(map) => match map.get("entries") {
            Some(serde_json::Value::Object(entries)) => entries.values().collect(),
            Some(serde_json::Value::Array(entries)) => entries.iter().collect(),
            _ => bail!("\"files\" has no entries"),
        },
        _ => bail!("no \"files\" list"),
    };
    let mut out = Vec::new();
    for file in list {
        let key = file["key"]
            .as_str()
            .context("a file without \"key\"")?
            .to_string();
        let size = file["size"]
            .as_u64()
            .with_context(|| format!("{key}: no \"size\""))?;
        let checksum = file["checksum"]
            .as_str()
            .with_context(|| format!("{key}: no \"checksum\""))?;
        let md5 = checksum
            .strip_prefix("md5:")
            .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("{key}: checksum {checksum:?} is not md5:<32 hex digits>"))?
            .to_ascii_lowercase();
        let url = file["links"]["self"]
            .as_str()
            .or_else(|| file["links"]["content"].as_str())
            .with_context(|| format!("{key}: no links.self"))?
            .to_string();
        out.push(RemoteFile {
            key,
            size,
            md5,
            url,
        });
    }
    Ok(out)
}

/// Downloads the CSV files and `subsetK.zip` for `subsets` into `dir` and unzips them.
pub fn download_luna16(dir: &Path, subsets: &[usize], options: &Options) -> Result<()> {
    genesis_io::create_dir_all(dir)?;
    let agent = agent();
    let mut wanted = Vec::new();
    for (index, (id, range)) in RECORDS.iter().enumerate() {
        // The first record also holds the CSV files, which every run wants.
        if index > 0 && !subsets.iter().any(|k| range.contains(k)) {
            continue;
        }
        for file in fetch_record(&agent, options, id)? {
            let is_csv = file.key.ends_with(".csv");
            if is_csv || subset_of(&file.key).is_some_and(|k| subsets.contains(&k)) {
                wanted.push(file);
            }
        }
    }
    for k in subsets {
        if !wanted.iter().any(|f| subset_of(&f.key) == Some(*k)) {
            bail!(
                "subset{k}.zip is not listed in the Zenodo records at {}",
                options.base_url
            );
        }
    }
    for file in &wanted {
        let target = dir.join(&file.key);
        match subset_of(&file.key) {
            Some(k) => {
                let subset_dir = dir.join(format!("subset{k}"));
                let marker = subset_dir.join(".unzipped");
                if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == file.md5) {
                    eprintln!(
                        "download: {} already unzipped in {}, skipped",
                        file.key,
                        subset_dir.display()
                    );
                    continue;
                }
                download_file(&agent, file, &target, options)?;
                unzip(&target, &subset_dir, &format!("subset{k}"))?;
                std::fs::write(&marker, &file.md5)
                    .with_context(|| format!("cannot write {}", marker.display()))?;
                if !options.keep_zips {
                    std::fs::remove_file(&target)
                        .with_context(|| format!("cannot remove {}", target.display()))?;
                }
            }
            None => download_file(&agent, file, &target, options)?,
        }
    }
    Ok(())
}

/// `K` of `subsetK.zip`.
fn subset_of(key: &str) -> Option<usize> {
    key.strip_prefix("subset")?
        .strip_suffix(".zip")?
        .parse()
        .ok()
}

/// Outcome of one failed attempt.
#[derive(Debug)]
enum Attempt {
    /// Worth another try (network trouble, 5xx, 408, 429, short body).
    Retry(anyhow::Error),
    /// Not worth it (4xx, checksum mismatch).
    Fatal(anyhow::Error),
}

fn classify(err: ureq::Error) -> Attempt {
    match err {
        ureq::Error::Status(code, response) => {
            let message = anyhow::anyhow!(
                "HTTP {code} {} from {}",
                response.status_text(),
                response.get_url()
            );
            if code >= 500 || code == 408 || code == 429 {
                Attempt::Retry(message)
            } else {
                Attempt::Fatal(message)
            }
        }
        ureq::Error::Transport(t) => Attempt::Retry(anyhow::anyhow!("{t}")),
    }
}

fn with_retries<T>(
    options: &Options,
    what: &str,
    mut f: impl FnMut() -> Result<T, Attempt>,
) -> Result<T> {
    let attempts = options.retries.max(1);
    let mut delay = options.backoff;
    for attempt in 1..=attempts {
        match f() {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(err)) => return Err(err.context(format!("{what} failed"))),
            Err(Attempt::Retry(err)) if attempt == attempts => {
                return Err(err.context(format!("{what} failed after {attempts} attempts")));
            }
            Err(Attempt::Retry(err)) => {
                eprintln!(
                    "download: {what}: {err:#}; retrying in {:.1} s ({attempt}/{attempts})",
                    delay.as_secs_f64()
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    bail!("{what}: no attempt made")
}

fn part_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// MD5 of a file, lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads `file` to `target`: skips a complete verified file, resumes `target.part`,
/// verifies size and MD5 before renaming.
pub fn download_file(
    agent: &ureq::Agent,
    file: &RemoteFile,
    target: &Path,
    options: &Options,
) -> Result<()> {
    if std::fs::metadata(target).is_ok_and(|m| m.len() == file.size) {
        if md5_file(target)? == file.md5 {
            eprintln!(
                "download: {} is complete and verified, skipped",
                target.display()
            );
            return Ok(());
        }
        eprintln!(
            "download: {} does not match its MD5, downloading again",
            target.display()
        );
        std::fs::remove_file(target)
            .with_context(|| format!("cannot remove {}", target.display()))?;
    }
    let part = part_path(target);
    let bar = progress_bar(file, options);
    with_retries(options, &file.url, || fetch_into(agent, file, &part, &bar))?;
    bar.finish_and_clear();
    let actual = md5_file(&part)?;
    if actual != file.md5 {
        std::fs::remove_file(&part).with_context(|| format!("cannot remove {}", part.display()))?;
        bail!(
            "{}: checksum mismatch: MD5 {actual}, the record says {}; the partial file was removed, run again to retry",
            file.key,
            file.md5
        );
    }
    std::fs::rename(&part, target)
        .with_context(|| format!("cannot rename {} to {}", part.display(), target.display()))?;
    eprintln!(
        "download: {} ({} bytes, MD5 verified)",
        target.display(),
        file.size
    );
    Ok(())
}

fn progress_bar(file: &RemoteFile, options: &Options) -> indicatif::ProgressBar {
    if !options.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(file.size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(file.key.clone());
    bar
}

/// One attempt: continue `part` from its length.
fn fetch_into(
    agent: &ureq::Agent,
    file: &RemoteFile,
    part: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<(), Attempt> {
    let io = |e: std::io::Error, what: &str| {
        Attempt::Fatal(anyhow::anyhow!("{}: {what}: {e}", part.display()))
    };
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > file.size {
        std::fs::remove_file(part).map_err(|e| io(e, "cannot remove"))?;
        have = 0;
    }
    if have == file.size {
        return Ok(());
    }
    let mut request = agent.get(&file.url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) => {
            // The server cannot serve the rest: start over on the next attempt.
            std::fs::remove_file(part).map_err(|e| io(e, "cannot remove"))?;
            return Err(Attempt::Retry(anyhow::anyhow!(
                "range not satisfiable, restarting {}",
                file.key
            )));
        }
        Err(err) => return Err(classify(err)),
    };
    let resumed = response.status() == 206;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| io(e, "cannot open"))?;
    let mut written = if resumed { have } else { 0 };
    bar.set_position(written);
    let mut reader = response.into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                out.flush().map_err(|e| io(e, "cannot write"))?;
                return Err(Attempt::Retry(anyhow::anyhow!(
                    "transfer interrupted at {written} of {} bytes: {e}",
                    file.size
                )));
            }
        };
        if written + n as u64 > file.size {
            return Err(Attempt::Fatal(anyhow::anyhow!(
                "{}: the server sent more than the {} bytes the record lists",
                file.key,
                file.size
            )));
        }
        out.write_all(&buffer[..n])
            .map_err(|e| io(e, "cannot write"))?;
        written += n as u64;
        bar.set_position(written);
    }
    out.flush().map_err(|e| io(e, "cannot write"))?;
    if written < file.size {
        return Err(Attempt::Retry(anyhow::anyhow!(
            "transfer ended at {written} of {} bytes",
            file.size
        )));
    }
    Ok(())
}

/// Unpacks `zip_path` into `out_dir`, dropping a leading `prefix/` from entry names (the
/// LUNA16 zips hold `subsetK/…`). Entries go through `<name>.part` and a rename; entries
/// already present with the right size are kept, so an interrupted unzip resumes.
pub fn unzip(zip_path: &Path, out_dir: &Path, prefix: &str) -> Result<usize> {
    let file = std::fs::File::open(zip_path)
        .with_context(|| format!("cannot open {}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a zip file", zip_path.display()))?;
    genesis_io::create_dir_all(out_dir)?;
    let mut n_files = 0;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .with_context(|| format!("{}: bad entry {index}", zip_path.display()))?;
        if entry.is_dir() {
            continue;
        }
        let Some(name) = entry.enclosed_name() else {
            bail!(
                "{}: entry {:?} escapes the output directory",
                zip_path.display(),
                entry.name()
            );
        };
        let relative = name
            .strip_prefix(prefix)
            .map(Path::to_path_buf)
            .unwrap_or(name);
        let target = out_dir.join(&relative);
        if std::fs::metadata(&target).is_ok_and(|m| m.len() == entry.size()) {
            n_files += 1;
            continue;
        }
        if let Some(parent) = target.parent() {
            genesis_io::create_dir_all(parent)?;
        }
        let temp = part_path(&target);
        let mut out = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| {
            format!(
                "{}: cannot extract {}",
                zip_path.display(),
                relative.display()
            )
        })?;
        drop(out);
        std::fs::rename(&temp, &target)
            .with_context(|| format!("cannot rename {}", temp.display()))?;
        n_files += 1;
    }
    eprintln!(
        "unzip: {} files from {} into {}",
        n_files,
        zip_path.display(),
        out_dir.display()
    );
    Ok(n_files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Misbehaviour the test server can be told to show.
    #[derive(Debug, Default)]
    struct Faults {
        /// Answer this many file requests with 500.
        errors: usize,
        /// Cut the next full-body file response after half the body.
        cut_once: bool,
        /// Serve a corrupted body for files.
        wrong_body: bool,
    }

    struct Server {
        base: String,
        faults: Arc<Mutex<Faults>>,
        requests: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        served: Arc<AtomicUsize>,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    /// A loopback HTTP/1.1 server: `/api/records/{id}` JSON, `/redirect/{key}` → 302,
    /// `/files/{key}` with Range support. One request per connection.
    fn serve(files: Vec<(String, Vec<u8>)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Mutex::new(Faults::default()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (f, r, s, n, b) = (
            faults.clone(),
            requests.clone(),
            stop.clone(),
            served.clone(),
            base.clone(),
        );
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming().take(500) {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let _ = handle(stream, &files, &b, &f, &r);
            }
        });
        Server {
            base,
            faults,
            requests,
            stop,
            served,
            handle: Some(handle),
        }
    }

    fn handle(
        mut stream: TcpStream,
        files: &[(String, Vec<u8>)],
        base: &str,
        faults: &Mutex<Faults>,
        requests: &Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut range_start = None;
        for _ in 0..100 {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        requests
            .lock()
            .unwrap()
            .push(format!("{path} {range_start:?}"));
        let send = |stream: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
            write!(
                stream,
                "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n"
            )?;
            stream.write_all(body)
        };
        if let Some(id) = path.strip_prefix("/api/records/") {
            let entries: Vec<serde_json::Value> = files
                .iter()
                .filter(|(key, _)| id == "3723295" || key.starts_with("subset7"))
                .filter(|(key, _)| id != "3723295" || !key.starts_with("subset7"))
                .map(|(key, bytes)| {
                    let md5 = hex::encode(Md5::digest(bytes));
                    serde_json::json!({"key": key, "size": bytes.len(), "checksum": format!("md5:{md5}"),
                        "links": {"self": format!("{base}/redirect/{key}")}})
                })
                .collect();
            let body = serde_json::json!({"id": id, "files": entries}).to_string();
            let headers = format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            return send(&mut stream, "200 OK", &headers, body.as_bytes());
        }
        if let Some(key) = path.strip_prefix("/redirect/") {
            return send(
                &mut stream,
                "302 Found",
                &format!("Location: {base}/files/{key}\r\nContent-Length: 0\r\n"),
                b"",
            );
        }
        let key = path.strip_prefix("/files/").unwrap_or("");
        let Some((_, bytes)) = files.iter().find(|(k, _)| k == key) else {
            return send(&mut stream, "404 Not Found", "Content-Length: 0\r\n", b"");
        };
        let mut faults = faults.lock().unwrap();
        if faults.errors > 0 {
            faults.errors -= 1;
            return send(
                &mut stream,
                "500 Internal Server Error",
                "Content-Length: 0\r\n",
                b"",
            );
        }
        let mut body = bytes.clone();
        if faults.wrong_body {
            body[0] ^= 0xff;
        }
        let start = range_start.unwrap_or(0).min(body.len());
        let (status, headers) = if range_start.is_some() {
            (
                "206 Partial Content",
                format!(
                    "Content-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n",
                    body.len() - start,
                    body.len() - 1,
                    body.len()
                ),
            )
        } else {
            ("200 OK", format!("Content-Length: {}\r\n", body.len()))
        };
        if faults.cut_once && range_start.is_none() {
            faults.cut_once = false;
            write!(
                stream,
                "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n"
            )?;
            stream.write_all(&body[..body.len() / 2])?;
            stream.flush()?;
            return stream.shutdown(std::net::Shutdown::Both);
        }
        send(&mut stream, status, &headers, &body[start..])
    }

    fn make_zip(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn options(base: &str) -> Options {
        Options {
            base_url: base.to_string(),
            retries: 4,
            backoff: Duration::from_millis(5),
            keep_zips: false,
            progress: false,
        }
    }

    fn dataset() -> Vec<(String, Vec<u8>)> {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let zip0 = make_zip(&[
            ("subset0/a.mhd", b"header".to_vec()),
            ("subset0/a.raw", raw.clone()),
        ]);
        let zip7 = make_zip(&[("subset7/b.mhd", b"header7".to_vec())]);
        vec![
            (
                "annotations.csv".into(),
                b"seriesuid,coordX,coordY,coordZ,diameter_mm\n".to_vec(),
            ),
            ("subset0.zip".into(), zip0),
            ("subset7.zip".into(), zip7),
        ]
    }

    #[test]
    fn downloads_resume_after_a_cut_and_retry_server_errors() {
        let server = serve(dataset());
        {
            let mut f = server.faults.lock().unwrap();
            f.cut_once = true;
            f.errors = 2;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("luna16");
        download_luna16(&dir, &[0, 7], &options(&server.base)).unwrap();
        assert_eq!(std::fs::read(dir.join("subset0/a.mhd")).unwrap(), b"header");
        assert_eq!(
            std::fs::read(dir.join("subset0/a.raw")).unwrap().len(),
            200_000
        );
        assert_eq!(
            std::fs::read(dir.join("subset7/b.mhd")).unwrap(),
            b"header7"
        );
        assert!(dir.join("annotations.csv").is_file());
        assert!(
            !dir.join("subset0.zip").exists(),
            "zips are deleted without --keep-zips"
        );
        let requests = server.requests.lock().unwrap().clone();
        assert!(
            requests.iter().any(|r| r.contains("Some(")),
            "no Range request in {requests:?}"
        );

        // A second run fetches the records and nothing else.
        let before = server.served.load(Ordering::SeqCst);
        download_luna16(&dir, &[0, 7], &options(&server.base)).unwrap();
        let during: Vec<String> = server.requests.lock().unwrap()[requests.len()..].to_vec();
        assert!(
            during.iter().all(|r| r.starts_with("/api/records/")),
            "{during:?}"
        );
        assert_eq!(server.served.load(Ordering::SeqCst) - before, 2);
    }

    #[test]
    fn checksum_mismatch_leaves_no_final_file() {
        let server = serve(dataset());
        server.faults.lock().unwrap().wrong_body = true;
        let tmp = tempfile::tempdir().unwrap();
        let err = download_luna16(tmp.path(), &[0], &options(&server.base)).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("checksum mismatch"), "{message}");
        assert!(!tmp.path().join("annotations.csv").exists());
        assert!(!tmp.path().join("annotations.csv.part").exists());
    }

    #[test]
    fn persistent_server_errors_give_up_after_the_retries() {
        let server = serve(dataset());
        server.faults.lock().unwrap().errors = 100;
        let tmp = tempfile::tempdir().unwrap();
        let err = download_luna16(tmp.path(), &[0], &options(&server.base)).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("after 4 attempts") && message.contains("500"),
            "{message}"
        );
        assert!(!tmp.path().join("annotations.csv").exists());
    }

    #[test]
    fn missing_subset_and_bad_records_are_errors() {
        let server = serve(dataset());
        let tmp = tempfile::tempdir().unwrap();
        let err = download_luna16(tmp.path(), &[3], &options(&server.base)).unwrap_err();
        assert!(
            format!("{err:#}").contains("subset3.zip is not listed"),
            "{err:#}"
        );
        assert!(
            parse_record("{\"files\": [{\"key\": \"a\", \"size\": 1, \"checksum\": \"sha1:00\"}]}")
                .is_err()
        );
        let ok = parse_record(
            "{\"files\": [{\"key\": \"a.csv\", \"size\": 1, \"checksum\": \"md5:0123456789abcdef0123456789ABCDEF\", \"links\": {\"self\": \"u\"}}]}",
        )
        .unwrap();
        assert_eq!(ok[0].md5, "0123456789abcdef0123456789abcdef");
    }
}
