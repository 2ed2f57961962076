//! Migrations apply to an empty database, and applying them again is a no-op.

use kubeforge_tests::TestDb;

#[tokio::test]
async fn migrations_apply_to_empty_database_and_rerun_is_noop() {
    let db = TestDb::empty().await;
    let pool = db.pool(2).await;
    let tables_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables_before, 0);

    kubeforge::store::migrate(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "clusters",
        "events",
        "hosts",
        "idempotency_keys",
        "jobs",
        "machines",
        "node_pools",
        "operation_steps",
        "operations",
        "secrets",
        "service_secrets",
        "tenants",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t}: {tables:?}"
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let schema_before: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();

    kubeforge::store::migrate(&pool).await.unwrap();
    let applied_again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let schema_after: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(applied, applied_again);
    assert_eq!(applied as usize, kubeforge::store::MIGRATOR.iter().count());
    assert_eq!(schema_before, schema_after);
}
