// A real JDBC client for tests/integration/test_jdbc.py: several connections, each in its own
// thread, use server-side prepared statements (prepareThreshold=1, so pgJDBC names them S_1,
// S_2, ...) and batches through a transaction pool with fewer servers than connections.
// Prints "OK <rows>" on success; any wrong result or exception exits non-zero.
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class PreparedThroughPool {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[1]
                + "?user=" + args[2] + "&sslmode=disable&prepareThreshold=1";
        int clients = Integer.parseInt(args[3]);
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<Integer>> results = new ArrayList<>();
        for (int k = 0; k < clients; k++) {
            final int id = k;
            results.add(pool.submit(() -> run(url, id)));
        }
        int rows = 0;
        try {
            for (Future<Integer> f : results) rows += f.get(60, TimeUnit.SECONDS);
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(1);               // do not wait for the other threads
        }
        pool.shutdown();
        System.out.println("OK " + rows);
    }

    static int run(String url, int id) throws SQLException {
        int rows = 0;
        try (Connection c = DriverManager.getConnection(url)) {
            c.setAutoCommit(true);
            try (PreparedStatement ps = c.prepareStatement("select ?::int + ?::int, ?::text")) {
                for (int i = 0; i < 30; i++) {
                    ps.setInt(1, i); ps.setInt(2, id); ps.setString(3, "c" + id);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1) == i + id && rs.getString(2).equals("c" + id), "select " + i);
                    }
                }
            }
            try (PreparedStatement ins = c.prepareStatement("insert into jdbc_t (k, i) values (?, ?)")) {
                for (int i = 0; i < 20; i++) {
                    ins.setInt(1, id); ins.setInt(2, i); ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                check(counts.length == 20, "batch");
            }
            c.setAutoCommit(false);           // an explicit transaction with prepared statements
            try (PreparedStatement up = c.prepareStatement("update jdbc_t set i = i + 100 where k = ? and i = ?")) {
                for (int i = 0; i < 5; i++) {
                    up.setInt(1, id); up.setInt(2, i);
                    check(up.executeUpdate() == 1, "update " + i);
                }
            }
            c.commit();
            c.setAutoCommit(true);
            try (PreparedStatement cnt = c.prepareStatement("select count(*) from jdbc_t where k = ? and i >= 100")) {
                for (int i = 0; i < 10; i++) {
                    cnt.setInt(1, id);
                    try (ResultSet rs = cnt.executeQuery()) {
                        rs.next();
                        check(rs.getInt(1) == 5, "count");
                        rows = rs.getInt(1);
                    }
                }
            }
        }
        return rows;
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("wrong result: " + what);
    }
}
