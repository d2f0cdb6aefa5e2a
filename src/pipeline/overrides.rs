//! `--set KEY=VALUE` on a parsed pipeline file: dotted keys into its tables, `model.<id>.`
//! (or `model.*.`) into the rungs of the ladder by id, values read as TOML where they parse.

/// Applies one `KEY=VALUE` override. The value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays, quoted strings), else as a bare string.
pub(super) fn apply_override(doc: &mut toml::Table, spec: &str) -> std::result::Result<(), String> {
    let Some((key, raw)) = spec.split_once('=') else {
        return Err(format!("--set `{spec}`: write KEY=VALUE"));
    };
    let key = key.trim();
    let value = parse_value(raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("--set `{spec}`: `{key}` is not a dotted key"));
    }
    let mut table = doc;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        // `model.<id>`: the rung of the ladder with that id.
        if let Some(toml::Value::Array(items)) = table.get_mut(*part) {
            if i + 2 >= parts.len() {
                return Err(format!(
                    "--set `{spec}`: `{part}` is a list: write `{part}.<id>.<field>`"
                ));
            }
            // The id may itself contain dots (`model.opt-2.7b.path`): the longest run of
            // segments that names an entry, leaving at least one for the field.
            let ids: Vec<String> = items
                .iter()
                .filter_map(|v| v.get("id").and_then(|x| x.as_str()).map(str::to_string))
                .collect();
            let (id, used) = (1..parts.len() - i - 1)
                .rev()
                .map(|k| (parts[i + 1..i + 1 + k].join("."), k))
                .find(|(cand, _)| cand == "*" || ids.contains(cand))
                .unwrap_or_else(|| (parts[i + 1].to_string(), 1));
            // `*` sets the field on every entry (e.g. one fixture checkpoint for the ladder).
            let mut found = 0;
            for v in items.iter_mut() {
                if let toml::Value::Table(t) = v {
                    if id == "*" || t.get("id").and_then(|x| x.as_str()) == Some(id.as_str()) {
                        // Continue below the matched entry, skipping the id segments.
                        set_path(t, &parts[i + 1 + used..], value.clone(), spec)?;
                        found += 1;
                    }
                }
            }
            if found == 0 {
                return Err(format!("--set `{spec}`: no `{part}` with id `{id}`"));
            }
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return Err(format!("--set `{spec}`: `{part}` is not a table")),
        }
    }
    Ok(())
}

fn set_path(
    table: &mut toml::Table,
    parts: &[&str],
    value: toml::Value,
    spec: &str,
) -> std::result::Result<(), String> {
    let mut table = table;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return Err(format!("--set `{spec}`: `{part}` is not a table")),
        }
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}
