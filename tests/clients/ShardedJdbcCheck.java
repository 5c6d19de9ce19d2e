import java.io.StringReader;
import java.math.BigDecimal;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;

/**
 * pgjdbc through a sharded pgfleet (two shards, {@code accounts} sharded by {@code id}, {@code branches} a
 * reference table).
 *
 * <p>Usage: {@code java -cp <classes>:postgresql-42.5.5.jar ShardedJdbcCheck JDBC_URL USER PASSWORD
 * ID_ON_SHARD_0 ID_ON_SHARD_1 SHARD_0_IDS}. The URL keeps pgjdbc's default {@code prepareThreshold} (5): a
 * PreparedStatement becomes a named server-side statement on its fifth execution, Parse sent with that
 * execution, and later executions send only Bind/Execute. SHARD_0_IDS are the ids of 101..130 on shard 0. The
 * program creates the tables through pgfleet and checks every answer; the Rust test (sharding_drivers.rs)
 * checks on each shard primary where the rows landed. Ids: 1..40 single-row inserts, 101..130 batches,
 * 201..260 COPY.
 *
 * <p>Each section prints {@code ok NAME} or {@code FAIL NAME: why}; a refusal of pgfleet's that the test
 * documents prints {@code FINDING}. Exits 0 only if every check passed.
 */
public final class ShardedJdbcCheck {
    private static String url;
    private static String user;
    private static String password;
    private static long a;
    private static long b;
    private static final Set<Long> shard0Ids = new HashSet<>();
    private static final List<String> failures = new ArrayList<>();

    static final String REWRITE_REFUSAL =
            "pgfleet: this query across shards needs each shard to run a rewritten statement, which pgfleet cannot "
                    + "do for a statement prepared in an earlier request";

    static final class CheckFailed extends RuntimeException {
        CheckFailed(String message) {
            super(message);
        }
    }

    interface Section {
        void run() throws Exception;
    }

    static void check(boolean cond, String message) {
        if (!cond) {
            throw new CheckFailed(message);
        }
    }

    static Connection connect() throws SQLException {
        return connect(new Properties());
    }

    static Connection connect(Properties props) throws SQLException {
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("connectTimeout", "10");
        return DriverManager.getConnection(url, props);
    }

    static void section(String name, Section body) {
        try {
            body.run();
            System.out.println("ok    " + name);
        } catch (CheckFailed e) {
            failures.add(name + ": " + e.getMessage());
            System.out.println("FAIL  " + name + ": " + e.getMessage());
        } catch (Exception e) {
            failures.add(name + ": unexpected " + e);
            System.out.println("FAIL  " + name + ": unexpected " + e);
            e.printStackTrace();
        }
    }

    static BigDecimal balance(Connection c, long id) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("SELECT balance FROM accounts WHERE id = ?")) {
            ps.setLong(1, id);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no account " + id);
                BigDecimal v = rs.getBigDecimal(1);
                check(!rs.next(), "two rows for account " + id);
                return v;
            }
        }
    }

    static String balances(Connection c) throws SQLException {
        return balance(c, a).toPlainString() + "/" + balance(c, b).toPlainString();
    }

    static long countIds(Connection c, long from, long to) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM accounts WHERE id BETWEEN ? AND ?")) {
            ps.setLong(1, from);
            ps.setLong(2, to);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    static void ddl() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, "
                    + "balance numeric NOT NULL DEFAULT 0)");
            s.execute("CREATE TABLE branches (id int PRIMARY KEY, name text NOT NULL)");
        }
    }

    static void insertsAndReads() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ins = c.prepareStatement(
                    "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)")) {
                for (long i = 1; i <= 40; i++) {
                    ins.setLong(1, i);
                    ins.setString(2, "o" + i);
                    ins.setBigDecimal(3, new BigDecimal(100));
                    check(ins.executeUpdate() == 1, "insert " + i);
                }
                check(ins.unwrap(PGStatement.class).isUseServerPrepare(),
                        "past prepareThreshold the insert is a named server-side statement");
            }
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO branches (id, name) VALUES (?, ?)")) {
                ins.setInt(1, 1);
                ins.setString(2, "north");
                check(ins.executeUpdate() == 1, "reference insert 1");
                ins.setInt(1, 2);
                ins.setString(2, "south");
                check(ins.executeUpdate() == 1, "reference insert 2");
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT id, owner, balance FROM accounts WHERE id = ?")) {
                for (long i = 1; i <= 40; i++) {
                    ps.setLong(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "read of " + i + ": no row");
                        check(rs.getLong(1) == i && rs.getString(2).equals("o" + i)
                                && rs.getBigDecimal(3).compareTo(new BigDecimal(100)) == 0,
                                "read of " + i + ": " + rs.getLong(1) + " " + rs.getString(2));
                        check(!rs.next(), "read of " + i + ": two rows");
                    }
                }
            }
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT a.owner, b.name FROM accounts a JOIN branches b ON b.id = ? WHERE a.id = ?")) {
                ps.setInt(1, 1);
                ps.setLong(2, b);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next() && rs.getString(1).equals("o" + b) && rs.getString(2).equals("north"),
                            "join with the reference table");
                }
            }
        }
    }

    static void transactions() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (PreparedStatement debit = c.prepareStatement("UPDATE accounts SET balance = balance - ? WHERE id = ?");
                    PreparedStatement credit = c.prepareStatement(
                            "UPDATE accounts SET balance = balance + ? WHERE id = ?")) {
                debit.setBigDecimal(1, BigDecimal.TEN);
                debit.setLong(2, a);
                check(debit.executeUpdate() == 1, "debit");
                credit.setBigDecimal(1, BigDecimal.TEN);
                credit.setLong(2, b);
                check(credit.executeUpdate() == 1, "credit");
                check(balances(c).equals("90/110"), "inside the transaction: " + balances(c));
                c.commit();
                check(balances(c).equals("90/110"), "after commit: " + balances(c));
                c.commit();
                // Rolled back: neither.
                debit.setBigDecimal(1, new BigDecimal(50));
                debit.executeUpdate();
                credit.setBigDecimal(1, new BigDecimal(50));
                credit.executeUpdate();
                c.rollback();
                check(balances(c).equals("90/110"), "after rollback: " + balances(c));
                c.rollback();
            }
            // An error on the second shard fails the whole transaction.
            try (PreparedStatement set = c.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?");
                    PreparedStatement bad = c.prepareStatement("UPDATE accounts SET balance = 1 / 0 WHERE id = ?")) {
                set.setBigDecimal(1, BigDecimal.ONE);
                set.setLong(2, a);
                set.executeUpdate();
                bad.setLong(1, b);
                try {
                    bad.executeUpdate();
                    throw new CheckFailed("division by zero on the second shard succeeded");
                } catch (PSQLException e) {
                    check("22012".equals(e.getSQLState()), "error SQLSTATE " + e.getSQLState());
                }
                try {
                    set.executeUpdate();
                    throw new CheckFailed("a statement after the error succeeded");
                } catch (PSQLException e) {
                    check("25P02".equals(e.getSQLState()), "after the error: SQLSTATE " + e.getSQLState());
                }
                // COMMIT of a failed transaction: PostgreSQL answers ROLLBACK; pgjdbc 42.5 does not raise.
                c.commit();
                check(balances(c).equals("90/110"), "after commit of a failed transaction: " + balances(c));
                c.rollback();
                set.setBigDecimal(1, BigDecimal.ONE);
                set.setLong(2, b);
                set.executeUpdate();
                try (PreparedStatement nul = c.prepareStatement("UPDATE accounts SET owner = NULL WHERE id = ?")) {
                    nul.setLong(1, a);
                    nul.executeUpdate();
                    throw new CheckFailed("NOT NULL violation on the other shard succeeded");
                } catch (PSQLException e) {
                    check("23502".equals(e.getSQLState()), "error SQLSTATE " + e.getSQLState());
                }
                c.rollback();
                check(balances(c).equals("90/110"), "after rollback of a failed transaction: " + balances(c));
                c.rollback();
            }
        }
    }

    /** A read across shards: its SQL, the rows expected (each row's columns as strings). */
    static final String[][] CROSS_READS = {
        {"count and sum", "SELECT count(*), sum(balance) FROM accounts WHERE balance >= ?", "40|4000"},
        {"order by limit", "SELECT id, owner FROM accounts WHERE balance >= ? ORDER BY id DESC LIMIT 3",
            "40|o40;39|o39;38|o38"},
        {"min max", "SELECT min(balance), max(balance) FROM accounts WHERE balance >= ?", "90|110"},
        {"avg", "SELECT avg(balance) FROM accounts WHERE balance >= ?", "100.0000000000000000"},
        {"order by limit offset", "SELECT id FROM accounts WHERE balance >= ? ORDER BY id LIMIT 2 OFFSET 3", "4;5"},
    };

    static String rowsOf(ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        List<String> rows = new ArrayList<>();
        while (rs.next()) {
            List<String> cols = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                cols.add(rs.getString(i));
            }
            rows.add(String.join("|", cols));
        }
        return String.join(";", rows);
    }

    static void crossReads(String label, Properties extra) throws Exception {
        List<String> report = new ArrayList<>();
        try (Connection c = connect(extra)) {
            for (String[] q : CROSS_READS) {
                List<String> outcomes = new ArrayList<>();
                try (PreparedStatement ps = c.prepareStatement(q[1])) {
                    for (int run = 0; run < 8; run++) {
                        ps.setBigDecimal(1, BigDecimal.ZERO);
                        try (ResultSet rs = ps.executeQuery()) {
                            String got = rowsOf(rs);
                            outcomes.add(got.equals(q[2]) ? "ok" : "WRONG " + got);
                        } catch (PSQLException e) {
                            String msg = e.getServerErrorMessage() == null ? e.getMessage()
                                    : e.getServerErrorMessage().getMessage();
                            outcomes.add("0A000".equals(e.getSQLState()) && REWRITE_REFUSAL.equals(msg) ? "refused"
                                    : "0A000".equals(e.getSQLState()) && msg.startsWith("binary results (column")
                                    && msg.endsWith(") are not merged across shards: pgfleet merges the text format")
                                    ? "refused binary" : "error " + e.getSQLState() + " " + msg);
                        }
                    }
                }
                report.add(label + " " + q[0] + ": " + outcomes);
            }
        }
        for (String r : report) {
            System.out.println("      " + r);
        }
        for (String r : report) {
            check(!r.contains("WRONG") && !r.contains("error "), "wrong answer or unexpected error: " + r);
            check(!r.contains("refused"), "refused: " + r);
            if (r.contains("refused")) {
                System.out.println("FINDING " + r);
            }
        }
    }

    static void batches() throws Exception {
        String insert = "INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)";
        try (Connection c = connect()) {
            // One executeBatch over both shards: pgjdbc sends every row's Bind/Execute and one Sync; pgfleet
            // runs each row on its shard inside one transaction across them, committed at the Sync.
            try (PreparedStatement ps = c.prepareStatement(insert)) {
                for (long i = 101; i <= 115; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, "m" + i);
                    ps.setBigDecimal(3, BigDecimal.valueOf(i));
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 15, "batch over both shards counts " + counts.length);
                for (int k : counts) {
                    check(k == 1, "batch over both shards count " + k);
                }
            }
            check(countIds(c, 101, 115) == 15, "rows of the batch over both shards: " + countIds(c, 101, 115));
            // One batch per shard, both in one transaction (committed across the shards).
            c.setAutoCommit(false);
            for (boolean onShard0 : new boolean[] {true, false}) {
                try (PreparedStatement ps = c.prepareStatement(insert)) {
                    int n = 0;
                    for (long i = 116; i <= 130; i++) {
                        if (shard0Ids.contains(i) != onShard0) {
                            continue;
                        }
                        ps.setLong(1, i);
                        ps.setString(2, "m" + i);
                        ps.setBigDecimal(3, BigDecimal.valueOf(i));
                        ps.addBatch();
                        n++;
                    }
                    int[] counts = ps.executeBatch();
                    check(counts.length == n, "batch counts " + counts.length + " for " + n + " rows");
                    for (int k : counts) {
                        check(k == 1, "batch count " + k);
                    }
                }
            }
            c.commit();
            c.setAutoCommit(true);
            try (Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery(
                            "SELECT count(*), sum(balance) FROM accounts WHERE id BETWEEN 101 AND 130")) {
                rs.next();
                check(rs.getLong(1) == 30 && rs.getLong(2) == (101 + 130) * 30 / 2,
                        "rows of the batches: " + rs.getLong(1) + ", sum " + rs.getLong(2));
            }
        }
    }

    static void copy() throws Exception {
        try (Connection c = connect()) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder data = new StringBuilder();
            for (long i = 201; i <= 260; i++) {
                data.append(i).append('\t').append("c").append(i).append('\n');
            }
            long n = cm.copyIn("COPY accounts (id, owner) FROM STDIN", new StringReader(data.toString()));
            check(n == 60, "CopyManager.copyIn returned " + n);
            check(countIds(c, 201, 260) == 60, "copied rows: " + countIds(c, 201, 260));
        }
    }

    public static void main(String[] args) throws Exception {
        url = args[0];
        user = args[1];
        password = args[2];
        a = Long.parseLong(args[3]);
        b = Long.parseLong(args[4]);
        for (String id : args[5].split(",")) {
            shard0Ids.add(Long.parseLong(id));
        }
        section("ddl", ShardedJdbcCheck::ddl);
        section("inserts and reads by key", ShardedJdbcCheck::insertsAndReads);
        section("transactions across shards", ShardedJdbcCheck::transactions);
        section("reads across shards", () -> crossReads("default", new Properties()));
        Properties text = new Properties();
        text.setProperty("binaryTransfer", "false");
        section("reads across shards, binaryTransfer=false", () -> crossReads("text", text));
        section("batches", ShardedJdbcCheck::batches);
        section("copy", ShardedJdbcCheck::copy);
        if (!failures.isEmpty()) {
            System.err.println(failures.size() + " sharded JDBC check(s) failed:");
            for (String f : failures) {
                System.err.println("  - " + f);
            }
            System.exit(1);
        }
        System.out.println("all sharded JDBC checks passed");
    }
}
