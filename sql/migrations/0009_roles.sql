-- 0009_roles: least privilege.
--
-- Why: an application that only enqueues should not be able to read or change other people's tasks, and
-- a worker should not be able to purge history. Three roles, each a superset of the one before:
--   anchor_enqueuer  may call the enqueue functions, nothing else (no table access at all);
--   anchor_worker    may also claim, complete, fail, heartbeat, rescue, register, run cron and prune;
--   anchor_admin     may do everything, tables included (dashboard, CLI, operators).
-- The API functions run SECURITY DEFINER with a fixed search_path, so the first two need no table grants.
-- Roles are cluster-wide and created on request (`anchor install-sql --roles` → anchor.ensure_roles());
-- grants are per database and re-applied by anchor.apply_privileges(), which later migrations call after
-- adding their own rows to anchor.function_roles (the table is in 0001_schema). Last of the baseline, so
-- every API function exists when the privileges are applied.

insert into anchor.function_roles (function_name, role_name) values
('enqueue', 'anchor_enqueuer'),
('enqueue_many', 'anchor_enqueuer'),
('register_tasks', 'anchor_worker'),
('claim', 'anchor_worker'),
('complete', 'anchor_worker'),
('fail', 'anchor_worker'),
('finish_failure', 'anchor_worker'),
('fail_hook', 'anchor_worker'),
('hand_back', 'anchor_worker'),
('heartbeat_v2', 'anchor_worker'),
('deregister_worker', 'anchor_worker'),
('rescue', 'anchor_worker'),
('prune', 'anchor_worker'),
('cron_take_due', 'anchor_worker'),
('cron_fire', 'anchor_worker'),
('cron_fail', 'anchor_worker'),
('cron_next_wake', 'anchor_worker'),
('cron_list', 'anchor_worker'),
('cancel', 'anchor_admin'),
('retry_now', 'anchor_admin'),
('retry_hook', 'anchor_admin'),
('cron_pause', 'anchor_admin'),
('cron_resume', 'anchor_admin');

-- Makes every API function SECURITY DEFINER with a fixed search_path, takes EXECUTE on everything in the
-- schema away from PUBLIC, and grants each role what anchor.function_roles gives it (roles that do not
-- exist yet are skipped; ensure_roles() calls this again after creating them). Idempotent.
create function anchor.apply_privileges()
returns void
language plpgsql
as $$
declare
    v_function record;
begin
    execute 'revoke all on all functions in schema anchor from public';
    for v_function in
        select p.oid::regprocedure as signature, r.role_name
        from pg_catalog.pg_proc as p
        inner join anchor.function_roles as r on p.proname = r.function_name
        where p.pronamespace = 'anchor'::regnamespace
    loop
        -- every object the functions use is schema-qualified; pg_temp last so it can never shadow them
        execute format(
            'alter function %s security definer set search_path = pg_catalog, pg_temp', v_function.signature
        );
        if exists (select 1 from pg_catalog.pg_roles where rolname = v_function.role_name) then
            execute format('grant execute on function %s to %I', v_function.signature, v_function.role_name);
        end if;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anchor_enqueuer') then
        execute 'grant usage on schema anchor to anchor_enqueuer';
    end if;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anchor_admin') then
        execute 'grant usage on schema anchor to anchor_admin';
        execute 'grant select, insert, update, delete on all tables in schema anchor to anchor_admin';
        execute 'grant execute on all functions in schema anchor to anchor_admin';
    end if;
end;
$$;

-- Creates the three roles when missing (NOLOGIN: grant them to your login roles), nests them
-- (admin ⊇ worker ⊇ enqueuer) and applies the grants. Needs CREATEROLE. Idempotent.
create function anchor.ensure_roles()
returns void
language plpgsql
as $$
declare
    v_role text;
begin
    foreach v_role in array array['anchor_enqueuer', 'anchor_worker', 'anchor_admin'] loop
        if not exists (select 1 from pg_catalog.pg_roles where rolname = v_role) then
            execute format('create role %I nologin', v_role);
        end if;
    end loop;
    execute 'grant anchor_enqueuer to anchor_worker';
    execute 'grant anchor_worker to anchor_admin';
    perform anchor.apply_privileges();
end;
$$;

select anchor.apply_privileges();
