//! Storage groups: their names, ids and where their packs live.

use redb::{ReadableDatabase, ReadableTable};
use tern_core::names::GroupName;

use super::{next_counter, Catalog, CONTAINERS, GROUPS, GROUP_TOTALS};
use crate::store::cloud::bucket::BucketSpec;
use crate::store::records::{decode, encode, GroupRecord, GroupVolume};
use crate::store::{Result, StoreError};

/// Where a new group keeps its packs: neither field set means under the
/// data directory.
#[derive(Debug, Default)]
pub struct Place {
    pub volume: Option<GroupVolume>,
    pub cloud: Option<BucketSpec>,
}

impl Catalog {
    /// Every storage group: name and record.
    pub fn groups(&self) -> Result<Vec<(String, GroupRecord)>> {
        let t = self.db.begin_read()?.open_table(GROUPS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (name, rec) = row?;
            out.push((name.value().to_string(), decode("group", rec.value())?));
        }
        Ok(out)
    }

    /// The record of group `name`, if it exists.
    pub fn group(&self, name: &GroupName) -> Result<Option<GroupRecord>> {
        let groups = self.db.begin_read()?.open_table(GROUPS)?;
        let found = groups.get(name.as_str())?;
        found.map(|rec| decode("group", rec.value())).transpose()
    }

    pub fn group_id(&self, name: &GroupName) -> Result<Option<u32>> {
        Ok(self.group(name)?.map(|r| r.id))
    }

    /// The id of group `name`, recorded with a new id (packs under the data
    /// directory) if it is not there yet.
    pub fn insert_group(&self, name: &GroupName) -> Result<u32> {
        self.insert_group_with(name, Place::default(), false)
    }

    /// Records group `name` with its packs on a volume of its own or in a
    /// bucket; refused if the name is taken.
    pub fn insert_placed_group(&self, name: &GroupName, place: Place) -> Result<u32> {
        self.insert_group_with(name, place, true)
    }

    fn insert_group_with(&self, name: &GroupName, place: Place, must_be_new: bool) -> Result<u32> {
        let tx = self.begin_write()?;
        let id = {
            let mut groups = tx.open_table(GROUPS)?;
            let existing = groups
                .get(name.as_str())?
                .map(|rec| decode::<GroupRecord>("group", rec.value()))
                .transpose()?;
            match existing {
                Some(_) if must_be_new => {
                    return Err(StoreError::AlreadyExists(format!(
                        "storage group {name} exists"
                    )))
                }
                Some(rec) => rec.id,
                None => {
                    let id = u32::try_from(next_counter(&tx, "next_group")?).map_err(|_| {
                        StoreError::Corrupt("storage group ids are exhausted".into())
                    })?;
                    let rec = GroupRecord {
                        id,
                        volume: place.volume,
                        cloud: place.cloud,
                    };
                    groups.insert(name.as_str(), encode(&rec)?.as_slice())?;
                    id
                }
            }
        };
        tx.commit()?;
        Ok(id)
    }

    /// Forgets group `name`, which must hold no container and no chunk.
    pub fn remove_group(&self, name: &GroupName) -> Result<GroupRecord> {
        let tx = self.begin_write()?;
        let rec = {
            let mut groups = tx.open_table(GROUPS)?;
            let rec: GroupRecord = match groups.get(name.as_str())? {
                Some(v) => decode("group", v.value())?,
                None => return Err(StoreError::NotFound(format!("no storage group {name}"))),
            };
            let containers = tx.open_table(CONTAINERS)?;
            let held = containers
                .range((name.as_str(), "")..)?
                .next()
                .transpose()?
                .is_some_and(|(k, _)| k.value().0 == name.as_str());
            if held {
                return Err(StoreError::Invalid(format!(
                    "storage group {name} still has containers: remove them first"
                )));
            }
            let mut totals = tx.open_table(GROUP_TOTALS)?;
            let chunks = totals.get(rec.id)?.map_or(0, |t| t.value().0);
            if chunks > 0 {
                return Err(StoreError::Invalid(format!(
                    "storage group {name} still holds {chunks} chunks of deleted images: \
                     run `ternd gc` first"
                )));
            }
            totals.remove(rec.id)?;
            groups.remove(name.as_str())?;
            rec
        };
        tx.commit()?;
        Ok(rec)
    }
}
