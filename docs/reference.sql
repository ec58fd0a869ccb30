-- The serving table ota-pipeline must produce, computed straight from the lake's Parquet
-- files in DuckDB, one rule of design.md per step, sharing no code with the pipeline.
-- The fault harness (`make chaos`) compares MySQL with it row by row and column by column.
--
-- It reads what the harness's lake holds: text columns (or raw bytes in their place), the
-- timestamp as an int64 epoch of any unit, as the case data has it. Sections start with
-- `-- name:`; the harness runs `setup` once, `add_file` per lake file, then the queries.

-- name: setup
-- A value read as text: text as it is; raw bytes when they are UTF-8 (DuckDB shows the
-- bytes of a BLOB that are not printable ASCII as \xHH, a backslash as \x5C), else NULL.
CREATE MACRO text_of(x) AS CASE
    WHEN typeof(x) <> 'BLOB' THEN x::VARCHAR
    WHEN regexp_full_match(x::VARCHAR,
        '([^\\]|\\x[0-7][0-9A-F]|\\x(C[2-9A-F]|D[0-9A-F])\\x[89AB][0-9A-F]'
        || '|\\xE[0-9A-F](\\x[89AB][0-9A-F]){2}|\\xF[0-4](\\x[89AB][0-9A-F]){3})*')
        THEN decode(x::VARCHAR::BLOB)
    END;
-- A value that is there but cannot be read as text.
CREATE MACRO not_text(x) AS x IS NOT NULL AND text_of(x) IS NULL;

-- Integers: "123" and "123.0" are 123; anything else is NULL.
CREATE MACRO integer_of(t) AS CASE
    WHEN regexp_full_match(trim(t), '[+-]?[0-9]+(\.0+)?')
        THEN TRY_CAST(regexp_replace(trim(t), '\.0+$', '') AS BIGINT)
    END;

-- Floats: decimal text (an exponent allowed), finite.
CREATE MACRO float_of(t) AS CASE
    WHEN regexp_full_match(trim(t), '[+-]?[0-9.eE+-]*[0-9][0-9.eE+-]*')
        AND isfinite(TRY_CAST(trim(t) AS DOUBLE))
        THEN TRY_CAST(trim(t) AS DOUBLE)
    END;

-- Permissions: yes/true/1 and no/false/0, trimmed, any case.
CREATE MACRO permission_of(t) AS CASE
    WHEN lower(trim(t)) IN ('yes', 'true', '1') THEN true
    WHEN lower(trim(t)) IN ('no', 'false', '0') THEN false
    END;

-- hotel_price: letters, spaces, currency symbols and apostrophes are not part of the
-- number; one sign before it; no letter between its digits. The last . or , followed by
-- 1-2 digits at the end is the decimal mark, any other is a thousands separator.
CREATE MACRO price_noise() AS '\p{L}\s$€£¥₹₩₺₽₫฿₪¢₴₦₱₡''’';
CREATE MACRO price_digits(t) AS regexp_replace(t, '[^0-9.,]', '', 'g');
CREATE MACRO price_of(t) AS CASE
    WHEN regexp_full_match(trim(t),
            '[' || price_noise() || '+]*(-[' || price_noise() || '+]*)?[0-9.,][0-9.,' || price_noise() || ']*')
        AND regexp_matches(t, '[0-9]')
        AND NOT regexp_matches(t, '[0-9].*\p{L}.*[0-9]')
        THEN (CASE WHEN regexp_matches(trim(t), '^[^0-9.,]*-') THEN -1 ELSE 1 END)
            * TRY_CAST(CASE
                WHEN regexp_matches(price_digits(t), '[.,][0-9]{1,2}$')
                    THEN regexp_replace(regexp_replace(price_digits(t), '[.,][0-9]{1,2}$', ''), '[.,]', '', 'g')
                        || '.' || regexp_extract(price_digits(t), '[.,]([0-9]{1,2})$', 1)
                ELSE regexp_replace(price_digits(t), '[.,]', '', 'g')
                END AS DECIMAL(18, 6))
    END;

-- An epoch integer's unit is the one (nano-, micro-, milli- or seconds) that puts it
-- between 1971-01-01 and 2200-01-01; in microseconds, or NULL when none does.
CREATE MACRO plausible_seconds(s) AS s BETWEEN 31536000 AND 7258118399;
CREATE MACRO epoch_micros(v) AS CASE
    WHEN plausible_seconds(v // 1000000000) THEN v // 1000
    WHEN plausible_seconds(v // 1000000) THEN v
    WHEN plausible_seconds(v // 1000) THEN v * 1000
    WHEN plausible_seconds(v) THEN v * 1000000
    END;

CREATE TABLE lake_rows (
    source_file VARCHAR, source_row BIGINT, ingested_at BIGINT, source_day DATE,
    key_not_text BOOLEAN, ts_micros BIGINT,
    request_id VARCHAR, funnel_id VARCHAR, session_id VARCHAR, user_id BIGINT,
    user_agent VARCHAR, device_type VARCHAR, ip_address VARCHAR, page_name VARCHAR,
    subscriber_id BIGINT, has_email_contact_permission BOOLEAN,
    has_phone_contact_permission BOOLEAN, hotel_price DECIMAL(18, 6),
    hotel_price_raw VARCHAR, hotel_id BIGINT, currency VARCHAR, country VARCHAR,
    utm_source VARCHAR, search_query VARCHAR, num_guests BIGINT, destination_id BIGINT,
    hotel_name VARCHAR, hotel_rating DOUBLE, selected_room_id BIGINT, nights BIGINT,
    price_per_night DOUBLE, payment_status VARCHAR, confirmation_number VARCHAR
);

-- Rows that cannot be keyed, each with its reason (the first that applies, in this
-- order); NULL for the rows that load. The distance is --max-event-day-distance's default.
CREATE VIEW rejects AS
SELECT source_file, source_row, CASE
    WHEN key_not_text THEN 'not_text'
    WHEN request_id IS NULL OR regexp_full_match(request_id, '\s*') THEN 'missing_request_id'
    WHEN ts_micros IS NULL THEN 'unusable_timestamp'
    WHEN abs(make_timestamp(ts_micros)::DATE - source_day) > 30 THEN 'far_from_file_day'
    END AS reason
FROM lake_rows;

-- name: add_file
-- One file's rows, typed: its columns as they are in the file plus each row's ordinal
-- (source_row) handed over as Arrow ($1; the bundled DuckDB has no Parquet reader), its
-- path ($2) and ingestion time ($3: the file's modification time, or its object's
-- creation time, in microseconds). Its day comes from its name (YYYYMMDD_…).
INSERT INTO lake_rows
SELECT $2, source_row, $3,
    strptime(regexp_extract($2, '([0-9]{8})_[^/]*$', 1), '%Y%m%d')::DATE,
    not_text(request_id) OR not_text(funnel_id) OR not_text(session_id) OR not_text(page_name),
    epoch_micros("timestamp"),
    text_of(request_id), text_of(funnel_id), text_of(session_id), integer_of(user_id),
    user_agent, device_type, ip_address, text_of(page_name),
    integer_of(subscriber_id), permission_of(has_email_contact_permission),
    permission_of(has_phone_contact_permission), price_of(hotel_price),
    hotel_price, integer_of(hotel_id), currency, country,
    utm_source, search_query, integer_of(num_guests), integer_of(destination_id),
    hotel_name, float_of(hotel_rating), integer_of(selected_room_id), integer_of(nights),
    float_of(price_per_night), payment_status, confirmation_number
FROM arrow($1);


-- name: file_rejects
-- The rows of one file ($1) that do not load, by reason.
SELECT reason, count(*) FROM rejects
WHERE source_file = $1 AND reason IS NOT NULL
GROUP BY reason ORDER BY reason;

-- name: served
-- One row per event key (request_id, funnel_id, session_id, page_name, timestamp; NULLs
-- equal): the latest ingested, then the latest file, then the highest row of the file.
-- Columns as the harness compares them: text, each value written out canonically.
SELECT make_timestamp(ts_micros)::DATE::VARCHAR AS event_date,
    request_id, funnel_id, session_id,
    strftime(make_timestamp(ts_micros), '%Y-%m-%d %H:%M:%S.%f') AS "timestamp", page_name,
    user_id::VARCHAR, user_agent, device_type, ip_address, subscriber_id::VARCHAR,
    has_email_contact_permission::INTEGER::VARCHAR, has_phone_contact_permission::INTEGER::VARCHAR,
    hotel_price::VARCHAR, hotel_price_raw, hotel_id::VARCHAR, currency, country, utm_source,
    search_query, num_guests::VARCHAR, destination_id::VARCHAR, hotel_name,
    hotel_rating::DECIMAL(30, 6)::VARCHAR, selected_room_id::VARCHAR, nights::VARCHAR,
    price_per_night::DECIMAL(30, 6)::VARCHAR, payment_status, confirmation_number
FROM lake_rows JOIN rejects USING (source_file, source_row)
WHERE rejects.reason IS NULL
QUALIFY row_number() OVER (
    PARTITION BY request_id, funnel_id, session_id, page_name, ts_micros
    ORDER BY ingested_at DESC, source_file DESC, source_row DESC) = 1;
