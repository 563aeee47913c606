-- 0002_parameter_validation: what makes a duration, a backoff list and a task's parameters valid.
--
-- Why in the database: enqueue checks params against the task's registered JSON Schema and parses
-- durations itself, so every client (Python, psql, another language) gets the same refusal with the
-- same JSON path, and nothing invalid ever reaches anchor.tasks. The durations have a Python twin
-- (anchor_py.durations) that tests/sql/test_duration_agreement.py holds to the same results; the backoff
-- rule (anchor.retry_interval) is the one place a retry's wait is chosen. All pure functions: no table.

-- Durations ------------------------------------------------------------------------------------------

-- Parses one duration ('500ms', '5s', '30m', '1h30m', '1.5h'); null when the text is not one.
-- Exact in microseconds (half away from zero); the Python twin is anchor_py.durations.
create function anchor.try_parse_duration(p_text text)
returns interval
language plpgsql
immutable
as $$
declare
    v_text text := btrim(p_text);
    v_part text[];
    v_micros numeric := 0;
begin
    if v_text is null or v_text !~ '^([0-9]+(\.[0-9]+)?(h|ms|m|s))+$' then
        return null;
    end if;
    for v_part in select regexp_matches(v_text, '([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)', 'g') loop
        v_micros := v_micros + v_part[1]::numeric * case v_part[2]
            when 'h' then 3600000000
            when 'm' then 60000000
            when 's' then 1000000
            else 1000
        end;
    end loop;
    v_micros := round(v_micros);
    -- zero is not a duration, and 100000h keeps every value far inside interval and timedelta range
    if v_micros <= 0 or v_micros > 360000000000000 then
        return null;
    end if;
    return v_micros::bigint * interval '1 microsecond';
end;
$$;

-- Parses one duration or raises AT003 naming the bad text.
create function anchor.parse_duration(p_text text)
returns interval
language plpgsql
immutable
as $$
declare
    v_value interval := anchor.try_parse_duration(p_text);
begin
    if v_value is null then
        raise exception using
            errcode = 'AT003',
            message = format('%L is not a duration', p_text),
            hint = 'Use a number and a unit (h, m, s, ms), e.g. 500ms, 5s, 30m, 1h30m; it must be above zero.';
    end if;
    return v_value;
end;
$$;

-- Parses a comma-separated backoff list ('1m,2m,4m'); null when any entry is not a duration.
create function anchor.try_parse_intervals(p_text text)
returns interval[]
language sql
immutable
as $$
    select case when bool_and(v.value is not null) then array_agg(v.value order by e.ord) end
    from unnest(string_to_array(p_text, ',')) with ordinality as e (entry, ord)
    cross join lateral (select anchor.try_parse_duration(e.entry) as value) as v
$$;

-- Parses a backoff list or raises AT003 naming the bad text.
create function anchor.parse_intervals(p_text text)
returns interval[]
language plpgsql
immutable
as $$
declare
    v_value interval[] := anchor.try_parse_intervals(p_text);
begin
    if v_value is null then
        raise exception using
            errcode = 'AT003',
            message = format('%L is not a duration or a comma-separated list of durations', p_text),
            hint = 'Examples: 30m, or 1m,2m,4m,8m (retry k waits the k-th entry; the last repeats).';
    end if;
    return v_value;
end;
$$;

-- The backoff rule, in one place: retry k waits entry k of the list; past its end the last entry repeats.
create function anchor.retry_interval(intervals interval[], retry integer)
returns interval
language sql
immutable
as $$
    select coalesce(intervals[least(greatest(retry, 1), cardinality(intervals))], interval '0')
$$;

-- Parameter validation ------------------------------------------------------------------------------

-- The first problem that makes p_schema unusable ('<path>: <problem>'), or null. Only the JSON Schema
-- keywords the generator supports are allowed, so Python and SQL validation can never disagree.
create function anchor.schema_problem(p_schema jsonb, p_path text default '$')
returns text
language plpgsql
immutable
as $$
declare
    v_key text;
    v_problem text;
    v_type text := p_schema ->> 'type';
begin
    if jsonb_typeof(p_schema) is distinct from 'object' then
        return format('%s: a schema must be a JSON object', p_path);
    end if;
    select k into v_key from jsonb_object_keys(p_schema) as k
    where k not in (
        'type', 'properties', 'required', 'additionalProperties', 'enum', 'items', 'format',
        'minimum', 'maximum', 'minLength', 'maxLength', 'description'
    )
    limit 1;
    if v_key is not null then
        return format('%s: unsupported JSON Schema keyword %L', p_path, v_key);
    end if;
    if v_type is not null and v_type not in ('object', 'array', 'string', 'integer', 'number', 'boolean') then
        return format('%s.type: unsupported type %L', p_path, v_type);
    end if;
    if p_schema ? 'format' and p_schema ->> 'format' not in ('int32', 'int64', 'float', 'double', 'date', 'date-time') then
        return format('%s.format: unsupported format %L', p_path, p_schema ->> 'format');
    end if;
    if p_schema ? 'enum' and jsonb_typeof(p_schema -> 'enum') <> 'array' then
        return format('%s.enum: must be an array', p_path);
    end if;
    if p_schema ? 'required' and jsonb_typeof(p_schema -> 'required') <> 'array' then
        return format('%s.required: must be an array of property names', p_path);
    end if;
    if p_schema ? 'properties' then
        if jsonb_typeof(p_schema -> 'properties') <> 'object' then
            return format('%s.properties: must be an object', p_path);
        end if;
        for v_key in select k from jsonb_object_keys(p_schema -> 'properties') as k order by k loop
            v_problem := anchor.schema_problem(p_schema -> 'properties' -> v_key, p_path || '.properties.' || v_key);
            if v_problem is not null then
                return v_problem;
            end if;
        end loop;
    end if;
    if p_schema ? 'items' then
        return anchor.schema_problem(p_schema -> 'items', p_path || '.items');
    end if;
    return null;
end;
$$;

-- Whether p_text is a calendar date 'YYYY-MM-DD' (year 1..9999), checked without raising.
create function anchor.is_iso_date(p_text text)
returns boolean
language sql
immutable
as $$
    select coalesce((
        select m[1]::int >= 1 and m[2]::int between 1 and 12 and m[3]::int between 1 and extract(
            day from make_date(m[1]::int, m[2]::int, 1) + interval '1 month - 1 day'
        )
        from regexp_match(p_text, '^([0-9]{4})-([0-9]{2})-([0-9]{2})$') as m
        where m[1]::int >= 1 and m[2]::int between 1 and 12
    ), false)
$$;

-- Whether p_text is an RFC 3339 date-time with an offset ('2026-01-31T09:30:00Z', '...+08:00').
create function anchor.is_iso_datetime(p_text text)
returns boolean
language sql
immutable
as $$
    select coalesce((
        select anchor.is_iso_date(m[1]) and m[2]::int <= 23 and m[3]::int <= 59 and m[4]::int <= 59
            and (m[5] is null or m[5]::int <= 23) and (m[6] is null or m[6]::int <= 59)
        from regexp_match(
            p_text,
            '^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))$'
        ) as m
    ), false)
$$;

-- The first way p_value breaks p_schema ('<json path>: <problem>'), or null when it fits.
-- A null value for a property that is not required counts as absent.
create function anchor.params_violation(p_schema jsonb, p_value jsonb, p_path text default '$')
returns text
language plpgsql
immutable
as $$
declare
    v_type text := p_schema ->> 'type';
    v_actual text := jsonb_typeof(p_value);
    v_number numeric;
    v_text text;
    v_key text;
    v_problem text;
    v_item record;
begin
    if p_schema ? 'enum' and not exists (
        select 1 from jsonb_array_elements(p_schema -> 'enum') as e (value) where e.value = p_value
    ) then
        return format('%s: %s is not one of %s', p_path, p_value, p_schema -> 'enum');
    end if;

    if v_type = 'integer' then
        if v_actual <> 'number' then
            return format('%s: expected an integer, got %s', p_path, v_actual);
        end if;
        v_number := (p_value #>> '{}')::numeric;
        -- 1.0 is written as a fraction: strict clients (pydantic) refuse it as an integer, so do we
        if scale(v_number) > 0 then
            return format('%s: expected an integer, got %s', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'int32' and v_number not between -2147483648 and 2147483647 then
            return format('%s: %s is out of range for int32', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'int64' and v_number not between -9223372036854775808 and 9223372036854775807 then
            return format('%s: %s is out of range for int64', p_path, p_value);
        end if;
    elsif v_type = 'number' then
        if v_actual <> 'number' then
            return format('%s: expected a number, got %s', p_path, v_actual);
        end if;
        v_number := (p_value #>> '{}')::numeric;
    elsif v_type = 'boolean' and v_actual <> 'boolean' then
        return format('%s: expected a boolean, got %s', p_path, v_actual);
    elsif v_type = 'string' then
        if v_actual <> 'string' then
            return format('%s: expected a string, got %s', p_path, v_actual);
        end if;
        v_text := p_value #>> '{}';
        if (p_schema ->> 'minLength')::int > length(v_text) then
            return format('%s: shorter than minLength %s', p_path, p_schema ->> 'minLength');
        end if;
        if (p_schema ->> 'maxLength')::int < length(v_text) then
            return format('%s: longer than maxLength %s', p_path, p_schema ->> 'maxLength');
        end if;
        if p_schema ->> 'format' = 'date' and not anchor.is_iso_date(v_text) then
            return format('%s: %s is not a date (YYYY-MM-DD)', p_path, p_value);
        end if;
        if p_schema ->> 'format' = 'date-time' and not anchor.is_iso_datetime(v_text) then
            return format('%s: %s is not a date-time with an offset (RFC 3339)', p_path, p_value);
        end if;
    elsif v_type = 'array' then
        if v_actual <> 'array' then
            return format('%s: expected an array, got %s', p_path, v_actual);
        end if;
        if p_schema ? 'items' then
            for v_item in select e.value, e.ord - 1 as index
                from jsonb_array_elements(p_value) with ordinality as e (value, ord) loop
                v_problem := anchor.params_violation(p_schema -> 'items', v_item.value, format('%s[%s]', p_path, v_item.index));
                if v_problem is not null then
                    return v_problem;
                end if;
            end loop;
        end if;
    elsif v_type = 'object' then
        if v_actual <> 'object' then
            return format('%s: expected an object, got %s', p_path, v_actual);
        end if;
        select r into v_key from jsonb_array_elements_text(coalesce(p_schema -> 'required', '[]')) as r
        where coalesce(jsonb_typeof(p_value -> r), 'null') = 'null'
        limit 1;
        if v_key is not null then
            return format('%s.%s: is required', p_path, v_key);
        end if;
        for v_key in select k from jsonb_object_keys(p_value) as k order by k loop
            if p_schema -> 'properties' ? v_key then
                if jsonb_typeof(p_value -> v_key) <> 'null' then
                    v_problem := anchor.params_violation(p_schema -> 'properties' -> v_key, p_value -> v_key, p_path || '.' || v_key);
                    if v_problem is not null then
                        return v_problem;
                    end if;
                end if;
            elsif p_schema -> 'additionalProperties' = 'false'::jsonb then
                return format('%s.%s: unknown property (additionalProperties is false)', p_path, v_key);
            end if;
        end loop;
    end if;

    if v_number is not null and (p_schema ->> 'minimum')::numeric > v_number then
        return format('%s: %s is below the minimum %s', p_path, p_value, p_schema ->> 'minimum');
    end if;
    if v_number is not null and (p_schema ->> 'maximum')::numeric < v_number then
        return format('%s: %s is above the maximum %s', p_path, p_value, p_schema ->> 'maximum');
    end if;
    return null;
end;
$$;
