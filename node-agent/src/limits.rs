//! The instance type's network limits: from EC2 `DescribeInstanceTypes`, cached, with the built-in
//! table (`ipam_core::limits`) as the fallback.
//!
//! ```text
//!   limits("m5.large")
//!     ├─ memory cache hit ───────────────────────────────────────────────▶ as first resolved
//!     ├─ file cache hit (an earlier EC2 answer, survives restarts) ─────▶ source FileCache
//!     ├─ DescribeInstanceTypes ── ok, checked ──▶ memory (+ file) ──────▶ source Ec2
//!     │                         └─ failed / unknown / implausible ──┐
//!     └─ ipam_core::limits::lookup ◀─────────────────────────────────────┘
//!          ├─ known ──▶ memory ──────────────────────────────────────────▶ source BuiltIn
//!          └─ unknown ──▶ LimitsError::Unknown (EC2's error said too; nothing cached)
//! ```
//!
//! EC2 does not say how many branch ENIs a trunk carries (the VPC resource controller keeps its
//! own table for that, and only trunks the types in it). So `branch_enis` always comes from the
//! built-in table; a type EC2 calls trunking-capable that the table does not know is taken as
//! without trunking (logged), never guessed.
//!
//! Instance limits never change for a type, so a cached answer never expires. The cache is per
//! resolver; the agent keeps one for its life. A node start costs one `DescribeInstanceTypes`
//! (none with a warm file cache), which matters when a whole node group starts at once.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use ipam_core::limits::InstanceLimits;
use ipam_core::limits::lookup;
use serde::Deserialize;
use serde::Serialize;

use crate::ec2::Ec2;
use crate::ec2::InstanceTypeInfo;

/// Where a type's limits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitsSource {
    /// EC2 `DescribeInstanceTypes` (branch ENIs from the built-in table).
    Ec2,
    /// An earlier EC2 answer, from the file cache.
    FileCache,
    /// The built-in table, EC2 having failed or not known the type.
    BuiltIn,
}

impl fmt::Display for LimitsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ec2 => "EC2 DescribeInstanceTypes",
            Self::FileCache => "the file cache",
            Self::BuiltIn => "the built-in table",
        })
    }
}

/// A type's limits and their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// The limits, checked with [`InstanceLimits::validate`].
    pub limits: InstanceLimits,
    /// Where they came from (for a cache hit: where they first came from).
    pub source: LimitsSource,
}

/// Why a type's limits are not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// Neither EC2 nor the built-in table knows the type.
    #[error(
        "no limits for instance type {instance_type:?}: EC2 gave none ({ec2}) and the built-in table does not know it"
    )]
    Unknown {
        /// The type.
        instance_type: String,
        /// What went wrong with EC2.
        ec2: String,
    },
}

/// `Result` with [`LimitsError`].
pub type Result<T, E = LimitsError> = std::result::Result<T, E>;

/// The file cache's contents: the EC2 answers, by type.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    types: HashMap<String, InstanceLimits>,
}

/// Resolves and caches instance limits. Share it (`Arc`) or keep one per agent.
pub struct LimitsResolver<E: Ec2 + ?Sized> {
    ec2: Arc<E>,
    file: Option<PathBuf>,
    cache: Mutex<HashMap<String, ResolvedLimits>>,
    /// Held while a miss is resolved, so that callers racing on a cold cache ask EC2 once.
    resolving: tokio::sync::Mutex<()>,
}

impl<E: Ec2 + ?Sized> fmt::Debug for LimitsResolver<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitsResolver")
            .field("ec2", &self.ec2)
            .field("file", &self.file)
            .field("cached", &self.lock().len())
            .finish()
    }
}

impl<E: Ec2 + ?Sized> LimitsResolver<E> {
    /// A resolver asking `ec2`, with an empty memory cache and no file cache.
    pub fn new(ec2: Arc<E>) -> Self {
        Self {
            ec2,
            file: None,
            cache: Mutex::new(HashMap::new()),
            resolving: tokio::sync::Mutex::new(()),
        }
    }

    /// Also keeps EC2's answers in the JSON file `path` (read at every memory miss, rewritten
    /// after each EC2 answer; a file that cannot be read or written is logged and ignored).
    #[must_use]
    pub fn with_file_cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ResolvedLimits>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits of `instance_type`, and where they came from.
    ///
    /// # Errors
    ///
    /// [`LimitsError::Unknown`]: EC2 failed or does not know the type, and neither does the
    /// built-in table.
    #[tracing::instrument(skip(self))]
    pub async fn limits(&self, instance_type: &str) -> Result<ResolvedLimits> {
        if let Some(hit) = self.cached(instance_type) {
            return Ok(hit);
        }
        let _resolving = self.resolving.lock().await;
        if let Some(hit) = self.cached(instance_type) {
            return Ok(hit);
        }
        if let Some(limits) = self.read_file(instance_type).await {
            return Ok(self.remember(instance_type, limits, LimitsSource::FileCache));
        }
        let ec2_error = match self.ec2.describe_instance_types(&[instance_type.to_owned()]).await {
            Ok(infos) => match infos.iter().find(|i| i.instance_type == instance_type) {
                Some(info) => match from_ec2(info) {
                    Ok(limits) => {
                        let resolved = self.remember(instance_type, limits, LimitsSource::Ec2);
                        self.write_file(instance_type, limits).await;
                        return Ok(resolved);
                    }
                    Err(why) => why,
                },
                None => "the answer does not list the type".to_owned(),
            },
            Err(e) => e.to_string(),
        };
        match lookup(instance_type) {
            Some(limits) => {
                tracing::warn!(instance_type, ec2 = %ec2_error, "instance limits from the built-in table: EC2 gave none");
                Ok(self.remember(instance_type, limits, LimitsSource::BuiltIn))
            }
            None => Err(LimitsError::Unknown {
                instance_type: instance_type.to_owned(),
                ec2: ec2_error,
            }),
        }
    }

    fn cached(&self, instance_type: &str) -> Option<ResolvedLimits> {
        self.lock().get(instance_type).copied()
    }

    fn remember(&self, instance_type: &str, limits: InstanceLimits, source: LimitsSource) -> ResolvedLimits {
        let resolved = ResolvedLimits { limits, source };
        tracing::info!(
            instance_type,
            %source,
            max_enis = limits.max_enis,
            ipv4_per_eni = limits.ipv4_per_eni,
            branch_enis = limits.branch_enis,
            "instance limits"
        );
        self.lock().insert(instance_type.to_owned(), resolved);
        resolved
    }

    async fn read_cache_file(&self) -> Option<CacheFile> {
        let path = self.file.as_ref()?;
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "limits cache unreadable; ignored");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "limits cache is not valid; ignored");
                None
            }
        }
    }

    async fn read_file(&self, instance_type: &str) -> Option<InstanceLimits> {
        let limits = *self.read_cache_file().await?.types.get(instance_type)?;
        match limits.validate() {
            Ok(()) => Some(limits),
            Err(e) => {
                tracing::warn!(instance_type, error = %e, "limits cache entry is implausible; ignored");
                None
            }
        }
    }

    async fn write_file(&self, instance_type: &str, limits: InstanceLimits) {
        let Some(path) = &self.file else {
            return;
        };
        let mut file = self.read_cache_file().await.unwrap_or_default();
        file.types.insert(instance_type.to_owned(), limits);
        let text = match serde_json::to_vec_pretty(&file) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(error = %e, "limits cache not encoded");
                return;
            }
        };
        // Write then rename, so that a crash never leaves half a file behind.
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let written = async {
            tokio::fs::write(&temporary, &text).await?;
            tokio::fs::rename(&temporary, path).await
        };
        if let Err(e) = written.await {
            tracing::warn!(path = %path.display(), error = %e, "limits cache not written");
        }
    }
}

/// The limits in EC2's answer, branch ENIs from the built-in table, checked.
fn from_ec2(info: &InstanceTypeInfo) -> std::result::Result<InstanceLimits, String> {
    let max_enis = u8::try_from(info.max_enis).map_err(|_| format!("{} ENIs is more than 255", info.max_enis))?;
    let ipv4_per_eni = u16::try_from(info.ipv4_per_eni)
        .map_err(|_| format!("{} IPv4 addresses per ENI is more than 65535", info.ipv4_per_eni))?;
    let table = lookup(&info.instance_type);
    let branch_enis = match table {
        Some(t) if info.trunking && t.trunking => t.branch_enis,
        _ => 0,
    };
    if info.trunking && branch_enis == 0 {
        tracing::warn!(
            instance_type = %info.instance_type,
            "EC2 says the type supports trunking, but the branch ENI count is unknown: taken as without trunking"
        );
    }
    if let Some(t) = table
        && (t.max_enis != max_enis || t.ipv4_per_eni != ipv4_per_eni)
    {
        tracing::info!(
            instance_type = %info.instance_type,
            ec2_max_enis = max_enis,
            ec2_ipv4_per_eni = ipv4_per_eni,
            table_max_enis = t.max_enis,
            table_ipv4_per_eni = t.ipv4_per_eni,
            "EC2 and the built-in table differ; EC2 is used"
        );
    }
    let limits = InstanceLimits {
        max_enis,
        ipv4_per_eni,
        branch_enis,
        trunking: branch_enis > 0,
    };
    limits.validate().map_err(|e| format!("implausible answer ({e})"))?;
    Ok(limits)
}
