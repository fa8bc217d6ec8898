//! Test fixtures for suites that need a database of their own: a PostgreSQL database
//! created on the local server (127.0.0.1:5432, user `postgres`, as in CI) and
//! dropped when the fixture is.

use sqlx::{Connection, Executor};

/// The server's maintenance database, used to create and drop test databases.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL database of its own, dropped when the test ends.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    pub async fn new(test: &str) -> PgDatabase {
        sqlx::any::install_default_drivers();
        let name = format!("switchyard_store_{}_{test}", std::process::id());
        let mut admin = sqlx::AnyConnection::connect(ADMIN_URL).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await
            .unwrap();
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        PgDatabase { name }
    }

    /// Drops the database now, closing every connection to it (a database that goes
    /// away under a running gateway).
    pub async fn remove(&self) {
        let mut admin = sqlx::AnyConnection::connect(ADMIN_URL).await.unwrap();
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .unwrap();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own runtime: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::AnyConnection::connect(ADMIN_URL).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// A one-page PDF whose text layer says `text` (Helvetica, one line), with a correct
/// cross-reference table: a real document for the parser's tests.
pub fn tiny_pdf(text: &str) -> Vec<u8> {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('(', "\\(")
        .replace(')', "\\)");
    let content = format!("BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// The repository's root (for its scripts).
fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of the tests' environment (contract/requirements.txt: the OpenAI SDK and
/// pgserver), made on first use.
pub fn test_python() -> String {
    venv_python("contract")
}

/// The python of `dir`'s pinned virtual environment (`dir/requirements.txt`, a folder of
/// the repository), made on first use by scripts/venv.sh.
pub fn venv_python(dir: &str) -> String {
    let out = std::process::Command::new(repo_root().join("scripts/venv.sh"))
        .arg(dir)
        .output()
        .expect("scripts/venv.sh runs");
    assert!(
        out.status.success(),
        "the Python environment of {dir}/ could not be made: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `contract/<script>` in the tests' Python with `env`, to its end (blocking).
pub fn run_contract_script(script: &str, env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(test_python())
        .arg(repo_root().join("contract").join(script))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python runs")
}

/// A server run by one of contract/'s scripts in the tests' Python: the first line it
/// prints says where it is; it stops, deleting what it made, when its stdin closes (on
/// drop).
struct ScriptServer {
    child: std::process::Child,
    first_line: String,
}

impl ScriptServer {
    /// Starts `contract/<script>` (blocking: call it from a blocking thread or before
    /// the runtime) and waits for its first line.
    fn start(script: &str) -> ScriptServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new(test_python())
            .arg(repo_root().join("contract").join(script))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("contract/{script} does not start: {e}"));
        let mut first_line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut first_line)
            .expect("its first line");
        ScriptServer {
            child,
            first_line: first_line.trim().to_string(),
        }
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A PostgreSQL with pgvector of its own (PyPI pgserver, started by
/// contract/pgvector_server.py in a new directory, on a Unix socket): the shared server
/// of these machines has no pgvector. Stopped and deleted when dropped.
pub struct PgVectorServer(ScriptServer);

impl PgVectorServer {
    /// Starts one (blocking: call it from a blocking thread or before the runtime).
    pub fn start() -> PgVectorServer {
        let server = ScriptServer::start("pgvector_server.py");
        assert!(
            server.first_line.starts_with("postgresql://"),
            "no URI from pgserver: {:?}",
            server.first_line
        );
        PgVectorServer(server)
    }

    /// Its URI (`postgresql://postgres@localhost/postgres?host=<socket directory>`).
    pub fn url(&self) -> &str {
        &self.0.first_line
    }
}

/// An S3-compatible server of its own on a loopback port, with one empty bucket (PyPI
/// moto, started by contract/s3_server.py). Stopped when dropped.
pub struct S3Server(ScriptServer);

impl S3Server {
    /// Starts one (blocking: call it from a blocking thread or before the runtime).
    pub fn start() -> S3Server {
        let server = ScriptServer::start("s3_server.py");
        assert!(
            server.first_line.starts_with("http://127.0.0.1:"),
            "no endpoint from moto: {:?}",
            server.first_line
        );
        S3Server(server)
    }

    /// Its endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        self.0.first_line.split(' ').next().unwrap_or_default()
    }

    /// Its bucket's name.
    pub fn bucket(&self) -> &str {
        self.0.first_line.split(' ').nth(1).unwrap_or_default()
    }

    /// A `--files-url` for `prefix` in its bucket (credentials go in the environment,
    /// or in [`crate::files::blobs::ObjectBlobs::s3`]'s builder).
    pub fn files_url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&allow_http=true&region=us-east-1",
            self.bucket(),
            self.endpoint()
        )
    }
}
