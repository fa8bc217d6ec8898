//! The Conversations API (docs/responses.md): a conversation is an ordered list of
//! items with metadata; responses created with `conversation` read it as their context
//! and append their input and output to it.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::input::{BadInput, parse_items};
use super::request::metadata;
use super::service::{APPEND_ITEM, RandomIds, ServiceError, random_id, unix_now, with_id};
use crate::store::{Store, Write};

/// Most items one call adds (as OpenAI's API).
const MAX_ITEMS_PER_CALL: usize = 20;

#[derive(Clone)]
pub struct Conversations {
    store: Arc<Store>,
}

fn bad(param: &str, message: &str) -> ServiceError {
    ServiceError::invalid(BadInput {
        message: message.to_string(),
        param: param.to_string(),
    })
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::not_found(
        "conversation_id",
        format!("Conversation with id '{id}' not found."),
    )
}

/// The items to add from a body's `items`, checked and given ids.
fn new_items(body: &Value, required: bool) -> Result<Vec<Value>, ServiceError> {
    let items = match body.get("items") {
        None | Some(Value::Null) if !required => return Ok(Vec::new()),
        None | Some(Value::Null) => return Err(bad("items", "`items` is required")),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("items", "`items` must be a list of items")),
    };
    if items.len() > MAX_ITEMS_PER_CALL {
        return Err(bad("items", "at most 20 items can be added at once"));
    }
    parse_items(&Value::Array(items.clone()), "items").map_err(ServiceError::invalid)?;
    let mut ids = RandomIds;
    Ok(items.iter().map(|i| with_id(i.clone(), &mut ids)).collect())
}

fn body_metadata(body: &Value) -> Result<Map<String, Value>, ServiceError> {
    match body.as_object() {
        Some(o) => metadata(o).map_err(ServiceError::invalid),
        None => Err(bad("", "the body must be a JSON object")),
    }
}

/// Adds to `w` the appending of `items` to conversation `conv`, in order.
pub(crate) fn append_items<'a>(
    mut w: Write,
    conv: &str,
    items: impl IntoIterator<Item = &'a Value>,
    now: i64,
) -> Write {
    for item in items {
        w = w.then(
            APPEND_ITEM,
            vec![
                conv.into(),
                item["id"].as_str().unwrap_or_default().into(),
                now.into(),
                item.to_string().into(),
            ],
        );
    }
    w
}

/// Deletes the row `id` of `owner` from `table` (what belongs to it goes by cascade);
/// whether there was one.
pub(crate) async fn delete_owned(
    store: &Store,
    table: &'static str,
    id: &str,
    owner: &str,
) -> Result<bool, ServiceError> {
    let n = store
        .write(Write::one(
            format!("DELETE FROM {table} WHERE id = $1 AND owner = $2"),
            vec![id.into(), owner.into()],
        ))
        .await?;
    Ok(n.first().copied().unwrap_or(0) > 0)
}

/// A list call's `limit` (1–100, default 20) and whether `order` is descending (the
/// default), checked before anything is looked up.
pub fn page_args(limit: Option<i64>, order: Option<&str>) -> Result<(i64, bool), ServiceError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", "`limit` must be from 1 to 100"));
    }
    match order.unwrap_or("desc") {
        "desc" => Ok((limit, true)),
        "asc" => Ok((limit, false)),
        _ => Err(bad("order", "`order` must be asc or desc")),
    }
}

/// An OpenAI list page of `items`.
pub fn page(
    items: &[Value],
    after: Option<&str>,
    limit: Option<i64>,
    order: Option<&str>,
) -> Result<Value, ServiceError> {
    let (limit, desc) = page_args(limit, order)?;
    let mut items = items.to_vec();
    if desc {
        items.reverse();
    }
    let start = match after {
        None => 0,
        Some(a) => match items.iter().position(|i| i["id"] == a) {
            Some(p) => p + 1,
            None => return Err(bad("after", "`after` names no item of this list")),
        },
    };
    let page: Vec<Value> = items
        .iter()
        .skip(start)
        .take(limit as usize)
        .cloned()
        .collect();
    let has_more = start + page.len() < items.len();
    // The SDK types these as strings: an empty page has empty ids.
    let id = |i: Option<&Value>| i.map_or(json!(""), |v| v["id"].clone());
    Ok(json!({
        "object": "list",
        "data": page,
        "first_id": id(page.first()),
        "last_id": id(page.last()),
        "has_more": has_more,
    }))
}

impl Conversations {
    pub fn new(store: Arc<Store>) -> Conversations {
        Conversations { store }
    }

    fn object(id: &str, created_at: i64, metadata: &Value) -> Value {
        json!({"id": id, "object": "conversation", "created_at": created_at, "metadata": metadata})
    }

    /// `POST /v1/conversations` with optional `items` and `metadata`.
    pub async fn create(&self, body: &Value, owner: &str) -> Result<Value, ServiceError> {
        let meta = Value::Object(body_metadata(body)?);
        let items = new_items(body, false)?;
        let id = random_id("conv_");
        let now = unix_now();
        let mut w = Write::one(
            "INSERT INTO conversations (id, owner, created_at, metadata) VALUES ($1, $2, $3, $4)",
            vec![
                id.as_str().into(),
                owner.into(),
                now.into(),
                meta.to_string().into(),
            ],
        );
        w = append_items(w, &id, &items, now);
        self.store.write(w).await?;
        Ok(Self::object(&id, now, &meta))
    }

    /// `GET /v1/conversations/{id}`.
    pub async fn get(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT created_at, metadata FROM conversations WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| not_found(id))?;
        let meta: String = sqlx::Row::get(&row, "metadata");
        Ok(Self::object(
            id,
            sqlx::Row::get(&row, "created_at"),
            &serde_json::from_str(&meta).unwrap_or_default(),
        ))
    }

    /// `POST /v1/conversations/{id}`: replaces the metadata.
    pub async fn update(&self, id: &str, owner: &str, body: &Value) -> Result<Value, ServiceError> {
        if body.get("metadata").is_none_or(Value::is_null) {
            return Err(bad("metadata", "`metadata` is required"));
        }
        let meta = Value::Object(body_metadata(body)?);
        let n = self
            .store
            .write(Write::one(
                "UPDATE conversations SET metadata = $1 WHERE id = $2 AND owner = $3",
                vec![meta.to_string().into(), id.into(), owner.into()],
            ))
            .await?;
        if n[0] == 0 {
            return Err(not_found(id));
        }
        self.get(id, owner).await
    }

    /// `DELETE /v1/conversations/{id}` (its items with it).
    pub async fn delete(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        if !delete_owned(&self.store, "conversations", id, owner).await? {
            return Err(not_found(id));
        }
        Ok(json!({"id": id, "object": "conversation.deleted", "deleted": true}))
    }

    async fn all_items(&self, id: &str, owner: &str) -> Result<Vec<Value>, ServiceError> {
        self.get(id, owner).await?;
        let rows = self
            .store
            .fetch_all(
                "SELECT item FROM conversation_items WHERE conversation_id = $1 ORDER BY seq",
                &[id.into()],
            )
            .await?;
        Ok(crate::store::json_column(&rows, "item"))
    }

    /// `GET /v1/conversations/{id}/items?after=&limit=&order=`.
    pub async fn list_items(
        &self,
        id: &str,
        owner: &str,
        after: Option<&str>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Value, ServiceError> {
        page_args(limit, order)?;
        page(&self.all_items(id, owner).await?, after, limit, order)
    }

    /// `POST /v1/conversations/{id}/items`: appends `items`; the items added.
    pub async fn add_items(
        &self,
        id: &str,
        owner: &str,
        body: &Value,
    ) -> Result<Value, ServiceError> {
        self.get(id, owner).await?;
        let items = new_items(body, true)?;
        if items.is_empty() {
            return Err(bad("items", "`items` must not be empty"));
        }
        let now = unix_now();
        let mut w = Write::default();
        w = append_items(w, id, &items, now);
        self.store.write(w).await?;
        page(&items, None, Some(100), Some("asc"))
    }

    /// `GET /v1/conversations/{id}/items/{item_id}`.
    pub async fn get_item(&self, id: &str, owner: &str, item: &str) -> Result<Value, ServiceError> {
        self.all_items(id, owner)
            .await?
            .into_iter()
            .find(|i| i["id"] == item)
            .ok_or_else(|| {
                ServiceError::not_found("item_id", format!("Item with id '{item}' not found."))
            })
    }

    /// `DELETE /v1/conversations/{id}/items/{item_id}`: the conversation.
    pub async fn delete_item(
        &self,
        id: &str,
        owner: &str,
        item: &str,
    ) -> Result<Value, ServiceError> {
        self.get(id, owner).await?;
        let n = self
            .store
            .write(Write::one(
                "DELETE FROM conversation_items WHERE conversation_id = $1 AND item_id = $2",
                vec![id.into(), item.into()],
            ))
            .await?;
        if n[0] == 0 {
            return Err(ServiceError::not_found(
                "item_id",
                format!("Item with id '{item}' not found."),
            ));
        }
        self.get(id, owner).await
    }
}
