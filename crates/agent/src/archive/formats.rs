//! Reading tar.gz and zip archives entry by entry into a [`Writer`].
//!
//! Tar is read raw (`Entries::raw`): the tar crate would read a GNU long name, long link or PAX
//! header whole, whatever size it declares, before the entry it describes. Here each one's
//! declared size is checked first (at most [`Limits::max_path_bytes`] for a name,
//! [`Limits::max_header_bytes`] for a PAX header), and the data of every entry, written or
//! skipped, counts towards [`Limits::max_bytes`], so decompression stops at the limit plus a
//! few header blocks per entry.

use std::io::Read;

use super::writer::{Writer, unsafe_entry};
use super::{ArchiveError, bounded};

/// What extended headers said about the next entry.
#[derive(Default)]
struct Extended {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

fn bad_tar(e: std::io::Error) -> ArchiveError {
    ArchiveError::Format(format!("tar: {}", bounded(&e.to_string())))
}

/// The data of an extended header, refused before it is read if it declares more than `cap`.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    w: &mut Writer,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let size = entry.size();
    if size > cap as u64 {
        return Err(unsafe_entry(
            &entry.header().path_bytes(),
            format!("{what} of {size} bytes (at most {cap})"),
        ));
    }
    w.charge(size)?;
    let mut data = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut data).map_err(bad_tar)?;
    Ok(data)
}

fn set_once(slot: &mut Option<Vec<u8>>, data: Vec<u8>, what: &str) -> Result<(), ArchiveError> {
    if slot.replace(data).is_some() {
        return Err(ArchiveError::Format(format!("tar: two {what} headers for one entry")));
    }
    Ok(())
}

fn strip_nuls(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

impl Extended {
    fn pending(&self) -> bool {
        self.long_name.is_some() || self.long_link.is_some() || self.pax.is_some()
    }

    /// The entry's name and link target, with the extended headers applied (PAX over GNU over
    /// the header's own fields). A PAX `size` that differs from the header's is refused: the
    /// entry's data would be read as something else than what other tools see.
    fn apply<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
        let mut name = self
            .long_name
            .take()
            .map(strip_nuls)
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let mut link = self
            .long_link
            .take()
            .map(strip_nuls)
            .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()))
            .unwrap_or_default();
        if let Some(pax) = self.pax.take() {
            for ext in tar::PaxExtensions::new(&pax) {
                let ext = ext.map_err(bad_tar)?;
                match ext.key_bytes() {
                    b"path" => name = ext.value_bytes().to_vec(),
                    b"linkpath" => link = ext.value_bytes().to_vec(),
                    b"size" => {
                        let size = ext.value().ok().and_then(|v| v.parse::<u64>().ok());
                        if size != Some(entry.size()) {
                            return Err(unsafe_entry(&name, "a PAX size that differs from its header's"));
                        }
                    }
                    k if k.starts_with(b"GNU.sparse") => return Err(unsafe_entry(&name, "a sparse file")),
                    _ => {}
                }
            }
        }
        Ok((name, link))
    }
}

pub(super) fn unpack_tar(r: impl Read, w: &mut Writer) -> Result<(), ArchiveError> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(r);
    let mut ext = Extended::default();
    let name_cap = w.limits.max_path_bytes + 1; // GNU tar ends a long name with a NUL
    let pax_cap = w.limits.max_header_bytes;
    for entry in ar.entries().map_err(bad_tar)?.raw(true) {
        let mut entry = entry.map_err(bad_tar)?;
        let kind = entry.header().entry_type();
        match kind {
            T::GNULongName => {
                let data = read_extension(&mut entry, w, name_cap, "a GNU long name")?;
                set_once(&mut ext.long_name, data, "long name")?;
                continue;
            }
            T::GNULongLink => {
                let data = read_extension(&mut entry, w, name_cap, "a GNU long link")?;
                set_once(&mut ext.long_link, data, "long link")?;
                continue;
            }
            T::XHeader => {
                let data = read_extension(&mut entry, w, pax_cap, "a PAX header")?;
                set_once(&mut ext.pax, data, "PAX")?;
                continue;
            }
            _ => {}
        }
        let (name, link) = ext.apply(&entry)?;
        let size = entry.size();
        let mode = entry.header().mode().unwrap_or(0o644);
        match kind {
            T::Regular | T::Continuous => w.file(&name, mode, Some(size), &mut entry)?,
            T::Directory => {
                w.charge(size)?;
                w.dir(&name, mode)?;
            }
            T::Symlink => {
                w.charge(size)?;
                w.symlink(&name, &link)?;
            }
            T::Link => {
                w.charge(size)?;
                w.hardlink(&name, &link)?;
            }
            // Global PAX headers carry nothing we use; their data still counts.
            T::XGlobalHeader => {
                w.count()?;
                w.charge(size)?;
            }
            T::Char | T::Block => return Err(unsafe_entry(&name, "a device file")),
            T::Fifo => return Err(unsafe_entry(&name, "a FIFO")),
            other => return Err(unsafe_entry(&name, format!("an entry of type {other:?}"))),
        }
    }
    if ext.pending() {
        return Err(ArchiveError::Format(
            "tar: an extended header with no entry after it".into(),
        ));
    }
    Ok(())
}

fn bad_zip(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Format(format!("zip: {}", bounded(&e.to_string())))
}

pub(super) fn unpack_zip(f: std::fs::File, w: &mut Writer) -> Result<(), ArchiveError> {
    let mut zip = zip::ZipArchive::new(f).map_err(bad_zip)?;
    if zip.len() > w.limits.max_entries {
        return Err(ArchiveError::TooLarge(format!("{} entries", w.limits.max_entries)));
    }
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(bad_zip)?;
        let name = entry.name().map_err(bad_zip)?.as_bytes().to_vec();
        let mode = entry.unix_mode().unwrap_or(0o644);
        const S_IFMT: u32 = 0o170000;
        match mode & S_IFMT {
            0o120000 => {
                let cap = w.limits.max_path_bytes as u64;
                let mut target = Vec::new();
                (&mut entry).take(cap + 1).read_to_end(&mut target).map_err(bad_zip)?;
                if target.len() as u64 > cap {
                    return Err(unsafe_entry(&name, format!("a symlink target over {cap} bytes")));
                }
                w.charge(target.len() as u64)?;
                w.symlink(&name, &target)?;
            }
            0o020000 | 0o060000 => return Err(unsafe_entry(&name, "a device file")),
            0o010000 => return Err(unsafe_entry(&name, "a FIFO")),
            _ if entry.is_dir() => w.dir(&name, mode)?,
            _ => w.file(&name, mode, None, &mut entry)?,
        }
    }
    Ok(())
}
