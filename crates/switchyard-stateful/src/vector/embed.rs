//! Embeddings for vector stores: what computes them ([`Embedder`]: the gateway sends
//! them through its pipeline to `--embedding-model`), and their stored forms.

use futures_util::future::BoxFuture;

use crate::responses::service::EngineError;

/// Turns texts into vectors, one per text, in order.
pub trait Embedder: Send + Sync + 'static {
    /// The model's name (recorded with a store's chunks: a store keeps one model).
    fn model(&self) -> &str;

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, EngineError>>;
}

/// An `/v1/embeddings` answer's vectors, in input order (`data[].index`), checked: as
/// many as `n`, all of one dimension, finite.
pub fn from_answer(v: &serde_json::Value, n: usize) -> Result<Vec<Vec<f32>>, EngineError> {
    let bad = |m: &str| EngineError {
        status: 502,
        code: "bad_embeddings".into(),
        message: format!("The embedding model's answer is unusable: {m}"),
    };
    let data = v["data"].as_array().ok_or_else(|| bad("no `data` list"))?;
    if data.len() != n {
        return Err(bad(&format!("{} vectors for {n} inputs", data.len())));
    }
    let mut out = vec![Vec::new(); n];
    for (i, d) in data.iter().enumerate() {
        let at = d["index"].as_u64().map_or(i, |x| x as usize);
        let vec: Vec<f32> = d["embedding"]
            .as_array()
            .ok_or_else(|| bad("an `embedding` is not a list of numbers"))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("an `embedding` is not a list of numbers"))?;
        if at >= n || !out[at].is_empty() {
            return Err(bad("the `index` values do not cover the inputs once each"));
        }
        if vec.is_empty() || vec.iter().any(|x| !x.is_finite()) {
            return Err(bad("an empty or non-finite vector"));
        }
        out[at] = vec;
    }
    let dims = out[0].len();
    if out.iter().any(|v| v.len() != dims) {
        return Err(bad("vectors of different dimensions"));
    }
    Ok(out)
}

/// Float32 little-endian bytes (sqlite-vec's vector form).
pub fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `[x,y,…]` (pgvector's text form).
pub fn to_text(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_put_in_input_order_and_checked() {
        let v = json!({"data": [
            {"index": 1, "embedding": [0.0, 1.0]},
            {"index": 0, "embedding": [1.0, 0.0]}
        ]});
        assert_eq!(
            from_answer(&v, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
        assert!(from_answer(&v, 3).is_err());
        let mixed = json!({"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]});
        assert!(from_answer(&mixed, 2).is_err());
        let twice =
            json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]});
        assert!(from_answer(&twice, 2).is_err());
        assert_eq!(to_text(&[1.0, -0.5]), "[1,-0.5]");
        assert_eq!(to_blob(&[1.0]), 1.0f32.to_le_bytes().to_vec());
    }
}
